// GroupNorm followed by ReLU as one autograd operation for float32 CPU tensors.
//
// LibTorch 1.13 runs GroupNorm + ReLU as two operations. GroupNorm reads its
// input twice and writes its output, then ReLU reads and writes it again. Its
// backward pass adds a ReLU pass that writes a masked gradient before
// GroupNorm's two passes. The fused operation reads the input twice and writes
// the output once in forward. In backward it reads the input and the output
// gradient twice and writes the input gradient once. The inner loops come in
// AVX-512, AVX2 and baseline versions, chosen at run time.
#pragma once

#include <cstdint>
#include <ostream>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace scaffold {

// Computes relu(group_norm(input, groups, weight, bias, eps)) with gradients
// for input, weight and bias.
//
// input:  [N, C, *] with at least one spatial dimension, e.g. [N, C, D, H, W]
// weight: [C] (gamma), bias: [C] (beta)
// return: the shape of input
//
// The fused kernels run when input, weight and bias are float32 CPU tensors.
// They come in two layouts:
//  - contiguous input: output and input gradient are contiguous.
//  - channels-last input, with C innermost and no gaps (memory order N, *, C,
//    as ChannelsLast3d for 5-D and ChannelsLast for 4-D inputs): output and
//    input gradient have the strides of input. So a ChannelsLast3d input gives
//    ChannelsLast3d results without any layout copy. A grad_output in another
//    layout is copied to the layout of input once in backward.
// An input that is both (C == 1, or all spatial sizes 1) runs the contiguous
// kernels. Any other strided input, such as a permuted view, is copied to a
// contiguous one first. The two layouts sum in different orders, so their
// results agree to float32 rounding but not bit for bit. Other dtypes and
// devices, and empty inputs, fall back to torch::relu(torch::group_norm(...)),
// so the function works wherever LibTorch does. The fused kernels reduce in a
// fixed order, so their results are bitwise the same for any intra-op thread
// count.
//
// Throws std::invalid_argument when input has fewer than 3 dimensions, groups
// does not divide C, weight or bias is not [C], or eps is negative or not
// finite. Double backward is not supported: a backward pass through the fused
// kernels with create_graph=true throws std::runtime_error.
torch::Tensor group_norm_relu(const torch::Tensor& input, std::int64_t groups, const torch::Tensor& weight,
                              const torch::Tensor& bias, double eps);

// Implementation of each GroupNorm + ReLU pair in the U-Net.
enum class NormBackend {
  libtorch,  // torch::nn::GroupNorm then in-place torch::nn::ReLU
  fused,     // GroupNormReLU: one pass forward, two passes backward
};

// GroupNorm + ReLU module with the parameters of torch::nn::GroupNorm with
// affine=true: "weight" [C] initialised to 1 and "bias" [C] initialised to 0.
// It draws no random numbers, so a model built with it has the same
// parameters, in the same order, as one built with torch::nn::GroupNorm.
class GroupNormReLUImpl : public torch::nn::Module {
 public:
  // Throws std::invalid_argument unless groups >= 1, channels >= 1 and
  // groups divides channels.
  GroupNormReLUImpl(std::int64_t groups, std::int64_t channels, double eps = 1e-5);

  // x: [N, channels, *] -> same shape
  torch::Tensor forward(const torch::Tensor& x);

  void reset_parameters();

  void pretty_print(std::ostream& stream) const override;

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  std::int64_t groups_;
  std::int64_t channels_;
  double eps_;
};
TORCH_MODULE(GroupNormReLU);

}  // namespace scaffold
