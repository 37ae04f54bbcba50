// 3D convolution and 2x2x2 transposed convolution on CPU through oneDNN, as
// LibTorch autograd functions and drop-in modules.
//
// LibTorch 1.13 sends batch-1 conv3d with N*C*D*H <= 20480 to an im2col + BLAS
// path that reaches a few percent of the CPU's FMA peak. These functions call
// oneDNN's convolution and deconvolution primitives directly instead.
//
// Layouts. Weights stay in LibTorch's layouts ([O, I, kD, kH, kW] for
// convolutions, [I, O, kD, kH, kW] for transposed convolutions) and are
// reordered to the primitive's blocked layout inside each call, which costs
// under 1% of the convolution. Activations keep the layout they come in:
//   - ChannelsLast3d input (strides N, D, H, W, C): the primitives run on
//     oneDNN's ndhwc kernels and read and write the tensors in place, and the
//     output and the input gradient are ChannelsLast3d. This is the fast path,
//     which the U-Net uses. An input with one channel or one voxel is
//     contiguous in both layouts and takes this path too.
//   - Any other input is made contiguous; the primitives pick their preferred
//     blocked layout, and each call reorders its activations into it and back.
//
// Supported: float32 CPU tensors, stride 1 convolutions with any cubic kernel
// and symmetric padding, and transposed convolutions with kernel 2 and stride 2.
// Gradients flow to input, weight and bias. Double backward is not supported:
// a backward pass run with create_graph=true throws std::runtime_error.
#pragma once

#include <cstdint>

#include <c10/util/Optional.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace scaffold {

// Computes the stride-1 3D convolution of input with weight, like
// torch::conv3d(input, weight, bias, 1, padding).
//
// input:  [N, Cin, D, H, W] float32 on CPU
// weight: [Cout, Cin, k, k, k]
// bias:   [Cout] or none
// return: [N, Cout, D + 2p - k + 1, H + 2p - k + 1, W + 2p - k + 1]
//
// Inputs in neither plain nor ChannelsLast3d layout are copied to a
// contiguous tensor first, as torch::conv3d does. Throws std::invalid_argument for another dtype, device, rank or shape
// mismatch, and std::runtime_error when a oneDNN call fails.
torch::Tensor onednn_conv3d(const torch::Tensor& input, const torch::Tensor& weight,
                            const c10::optional<torch::Tensor>& bias, std::int64_t padding);

// Computes the 3D transposed convolution with kernel 2 and stride 2, like
// torch::conv_transpose3d(input, weight, bias, 2). A channels-last input runs
// as a 1x1x1 convolution to 8 x Cout channels and a depth-to-space copy,
// because that is faster than oneDNN's deconvolution kernels. A plain input
// runs oneDNN's deconvolution.
//
// input:  [N, Cin, D, H, W] float32 on CPU
// weight: [Cin, Cout, 2, 2, 2] (LibTorch's ConvTranspose3d layout)
// bias:   [Cout] or none
// return: [N, Cout, 2D, 2H, 2W]
//
// Same contiguity rule and errors as onednn_conv3d.
torch::Tensor onednn_conv_transpose3d(const torch::Tensor& input, const torch::Tensor& weight,
                                      const c10::optional<torch::Tensor>& bias);

// Computes onednn_conv3d(torch::cat({first, second}, 1), weight, bias,
// padding), the first convolution after a U-Net skip connection.
//
// first:  [N, C1, D, H, W], second: [N, C2, D, H, W] float32 on CPU
// weight: [Cout, C1 + C2, k, k, k]
//
// With both inputs in ChannelsLast3d it never builds the concatenation: it
// convolves each input with its slice of the weight and adds the results, and
// its backward pass writes the two input gradients separately. Other layouts
// concatenate and call onednn_conv3d. The result equals the concatenated
// convolution up to float rounding, as summation order differs. Same errors
// as onednn_conv3d, and std::invalid_argument when the inputs differ in batch
// or spatial size.
torch::Tensor onednn_conv3d_cat(const torch::Tensor& first, const torch::Tensor& second,
                                const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                                std::int64_t padding);

// Returns the number of shapes whose oneDNN primitives are cached. Each
// distinct (operation, input shape, weight shape, padding, bias, activation
// layout) adds one entry. A channels-last onednn_conv3d_cat uses three: the
// first input's convolution, and the second input's once adding to the
// output (forward) and once not (backward).
std::size_t onednn_conv_cache_size();

// Conv3d module on oneDNN with the parameters of torch::nn::Conv3d (stride 1,
// no groups or dilation): "weight" [Cout, Cin, k, k, k] and, when bias is set,
// "bias" [Cout]. Initialisation draws from the global generator in the same
// order and with the same bounds as torch::nn::Conv3d, so both modules built
// after the same torch::manual_seed hold equal parameters and their state
// dicts are interchangeable.
class OnednnConv3dImpl : public torch::nn::Module {
 public:
  // Throws std::invalid_argument when a channel count or the kernel size is
  // below 1 or the padding is negative.
  OnednnConv3dImpl(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel_size,
                   std::int64_t padding, bool bias);

  // x: [N, in_channels, D, H, W] -> [N, out_channels, D + 2p - k + 1, ...]
  torch::Tensor forward(const torch::Tensor& x);

  // forward(torch::cat({first, second}, 1)) through onednn_conv3d_cat,
  // without building the concatenation for channels-last inputs.
  torch::Tensor forward_cat(const torch::Tensor& first, const torch::Tensor& second);

  // Draws new weights (kaiming_uniform with a = sqrt(5)) and bias
  // (uniform in +-1/sqrt(fan_in)), as torch::nn::Conv3d does.
  void reset_parameters();

  void pretty_print(std::ostream& stream) const override;

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  std::int64_t in_channels_;
  std::int64_t out_channels_;
  std::int64_t kernel_size_;
  std::int64_t padding_;
};
TORCH_MODULE(OnednnConv3d);

// ConvTranspose3d module with kernel 2 and stride 2 on oneDNN, with the
// parameters of torch::nn::ConvTranspose3d: "weight" [Cin, Cout, 2, 2, 2] and,
// when bias is set, "bias" [Cout]. Initialisation matches
// torch::nn::ConvTranspose3d in draw order and bounds, whose fan_in is taken
// from weight dimension 1 (Cout * 8), as LibTorch does.
class OnednnConvTranspose3dImpl : public torch::nn::Module {
 public:
  // Throws std::invalid_argument when a channel count is below 1.
  OnednnConvTranspose3dImpl(std::int64_t in_channels, std::int64_t out_channels, bool bias);

  // x: [N, in_channels, D, H, W] -> [N, out_channels, 2D, 2H, 2W]
  torch::Tensor forward(const torch::Tensor& x);

  void reset_parameters();

  void pretty_print(std::ostream& stream) const override;

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  std::int64_t in_channels_;
  std::int64_t out_channels_;
};
TORCH_MODULE(OnednnConvTranspose3d);

// Implementation behind the convolution modules built by make_conv3d and
// make_conv_transpose3d.
enum class ConvBackend {
  libtorch,  // torch::nn::Conv3d / ConvTranspose3d, LibTorch's own kernels
  onednn,    // OnednnConv3d / OnednnConvTranspose3d
};

// Builds a stride-1 Conv3d with a cubic kernel on the chosen backend. Both
// modules hold the same parameter names, shapes and initial values for the
// same seed, so a model can switch backends without changing its state dict.
torch::nn::AnyModule make_conv3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel_size,
                                 std::int64_t padding, bool bias, ConvBackend backend);

// Builds a ConvTranspose3d with kernel 2 and stride 2 on the chosen backend.
torch::nn::AnyModule make_conv_transpose3d(std::int64_t in_channels, std::int64_t out_channels, bool bias,
                                           ConvBackend backend);

}  // namespace scaffold
