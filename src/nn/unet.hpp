// The 3D U-Net of the ScaFFold benchmark: base width 64, doubling per level,
// GroupNorm after every 3x3x3 convolution, transposed-convolution upsampling.
//
// Submodule names follow the PyTorch reference model, so parameter names read
// "inc.double_conv.0.weight", "down1.maxpool_conv.1.double_conv.4.bias",
// "up1.up.weight", "outc.conv.weight" and so on.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "nn/groupnorm_relu.hpp"
#include "nn/max_pool.hpp"
#include "nn/onednn_conv.hpp"

namespace scaffold {

// Conv3d(k3, p1, no bias) -> GroupNorm -> ReLU, twice.
class DoubleConvImpl : public torch::nn::Module {
 public:
  // `norm_backend` selects the GroupNorm + ReLU pairs. Both choices have the
  // same parameter names, shapes and initial values.
  DoubleConvImpl(int in_channels, int out_channels, int group_norm_groups,
                 ConvBackend backend = ConvBackend::libtorch, NormBackend norm_backend = NormBackend::libtorch);

  // x: [N, in_channels, D, H, W] -> [N, out_channels, D, H, W]
  torch::Tensor forward(const torch::Tensor& x);

  // forward(torch::cat({first, second}, 1)). On the oneDNN backend the first
  // convolution takes both inputs (onednn_conv3d_cat), so the concatenation
  // is never built.
  torch::Tensor forward_cat(const torch::Tensor& first, const torch::Tensor& second);

  // Layers in order: 0 conv, 1 GroupNorm, 2 ReLU, 3 conv, 4 GroupNorm, 5 ReLU.
  // With NormBackend::fused, 1 and 4 are GroupNormReLU and 2 and 5 are
  // torch::nn::Identity, which keeps the indices in parameter names.
  torch::nn::Sequential& layers() { return double_conv_; }

 private:
  torch::nn::Sequential double_conv_;
};
TORCH_MODULE(DoubleConv);

// MaxPool3d(2) -> DoubleConv: halves each spatial size. The pool is
// MaxPool3d2x2x2 on the oneDNN backend and torch::nn::MaxPool3d otherwise.
class DownImpl : public torch::nn::Module {
 public:
  DownImpl(int in_channels, int out_channels, int group_norm_groups, ConvBackend backend = ConvBackend::libtorch,
           NormBackend norm_backend = NormBackend::libtorch);

  // x: [N, in_channels, D, H, W] -> [N, out_channels, D/2, H/2, W/2]
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Sequential maxpool_conv_;
};
TORCH_MODULE(Down);

// ConvTranspose3d(in -> in/2, k2, s2) on the deeper input, then
// DoubleConv(in -> out) on the channel concatenation [skip, upsampled].
class UpImpl : public torch::nn::Module {
 public:
  UpImpl(int in_channels, int out_channels, int group_norm_groups, ConvBackend backend = ConvBackend::libtorch,
         NormBackend norm_backend = NormBackend::libtorch);

  // deep: [N, in_channels, D/2, H/2, W/2], skip: [N, in_channels/2, D, H, W]
  // -> [N, out_channels, D, H, W]
  torch::Tensor forward(const torch::Tensor& deep, const torch::Tensor& skip);

 private:
  torch::nn::AnyModule up_;  // ConvTranspose3d on the chosen backend
  DoubleConv conv_{nullptr};
};
TORCH_MODULE(Up);

// 1x1x1 convolution with bias from 64 channels to the class logits.
class OutConvImpl : public torch::nn::Module {
 public:
  OutConvImpl(int in_channels, int n_classes, ConvBackend backend = ConvBackend::libtorch);

  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::AnyModule conv_;  // Conv3d on the chosen backend
};
TORCH_MODULE(OutConv);

// U-Net with `layers` Down blocks (widths 64, 128, ..., 64 * 2^layers) and as
// many Up blocks. Parameters get LibTorch's default initialisation, so seed
// with torch::manual_seed before construction for reproducible weights.
class UNetImpl : public torch::nn::Module {
 public:
  // Throws std::invalid_argument when layers < 1, a channel count is < 1, or
  // group_norm_groups does not divide the base width 64. `backend` selects the
  // convolution implementation; parameter names and initial values are the
  // same for both. The GroupNorm + ReLU pairs follow it: LibTorch's modules
  // with ConvBackend::libtorch, the fused GroupNormReLU with ConvBackend::onednn.
  UNetImpl(int in_channels, int n_classes, int layers, int group_norm_groups,
           ConvBackend backend = ConvBackend::libtorch);

  // Same, with the GroupNorm + ReLU implementation chosen separately.
  UNetImpl(int in_channels, int n_classes, int layers, int group_norm_groups, ConvBackend backend,
           NormBackend norm_backend);

  // x: [N, in_channels, D, H, W] float32 -> logits [N, n_classes, D, H, W],
  // contiguous. Throws std::invalid_argument unless D, H and W are positive
  // multiples of 2^layers and the channel count matches.
  //
  // On the oneDNN backend the activations inside are ChannelsLast3d, because
  // all of its custom operations read and write that layout without
  // reorders. The input is converted on entry and the logits on exit.
  torch::Tensor forward(const torch::Tensor& x);

  int in_channels() const { return in_channels_; }
  int n_classes() const { return n_classes_; }
  int layers() const { return layers_; }

 private:
  void check_input(const torch::Tensor& x) const;

  int in_channels_;
  int n_classes_;
  int layers_;
  bool channels_last_;
  DoubleConv inc_{nullptr};
  std::vector<Down> downs_;
  std::vector<Up> ups_;
  OutConv outc_{nullptr};
};
TORCH_MODULE(UNet);

// Returns the number of scalar parameters (weights, biases, GroupNorm affine).
std::int64_t count_parameters(const UNet& net);

}  // namespace scaffold
