#include "nn/unet.hpp"

#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace scaffold {

namespace {

constexpr int kBaseWidth = 64;

constexpr double kGroupNormEps = 1e-5;

// Appends GroupNorm and ReLU as two entries of `layers`, so that the GroupNorm
// parameters keep their index in the parameter names with either backend.
void push_group_norm_relu(torch::nn::Sequential& layers, int groups, int channels, NormBackend norm_backend) {
  if (norm_backend == NormBackend::fused) {
    layers->push_back(GroupNormReLU(groups, channels, kGroupNormEps));
    layers->push_back(torch::nn::Identity());
    return;
  }

  // In-place ReLU is safe here because GroupNorm's backward reads its input,
  // not its output, and it saves one activation-sized buffer per block.
  layers->push_back(
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(kGroupNormEps).affine(true)));
  layers->push_back(torch::nn::ReLU(torch::nn::ReLUOptions(true)));
}

}  // namespace

DoubleConvImpl::DoubleConvImpl(int in_channels, int out_channels, int group_norm_groups, ConvBackend backend,
                               NormBackend norm_backend) {
  double_conv_->push_back(make_conv3d(in_channels, out_channels, 3, 1, false, backend));
  push_group_norm_relu(double_conv_, group_norm_groups, out_channels, norm_backend);
  double_conv_->push_back(make_conv3d(out_channels, out_channels, 3, 1, false, backend));
  push_group_norm_relu(double_conv_, group_norm_groups, out_channels, norm_backend);
  register_module("double_conv", double_conv_);
}

// TODO: CUDA builds have a fused GroupNorm + ReLU for bf16 channels-last
// tensors (src/cuda/group_norm_relu.hpp), which this block does not call yet.
// It would replace slots 1-2 and 4-5 when
// fused_group_norm_relu_unsupported_reason(x, groups) is empty.
torch::Tensor DoubleConvImpl::forward(const torch::Tensor& x) { return double_conv_->forward(x); }

torch::Tensor DoubleConvImpl::forward_cat(const torch::Tensor& first, const torch::Tensor& second) {
  auto layer = double_conv_->begin();
  auto* onednn_conv = layer->ptr()->as<OnednnConv3dImpl>();
  torch::Tensor h = onednn_conv != nullptr ? onednn_conv->forward_cat(first, second)
                                           : layer->forward(torch::cat({first, second}, 1));
  for (++layer; layer != double_conv_->end(); ++layer) {
    h = layer->forward(h);
  }
  return h;
}

DownImpl::DownImpl(int in_channels, int out_channels, int group_norm_groups, ConvBackend backend,
                   NormBackend norm_backend) {
  // The oneDNN backend keeps activations channels-last, which LibTorch's
  // max pool would turn into plain contiguous ones, at half its speed.
  torch::nn::AnyModule pool =
      backend == ConvBackend::onednn
          ? torch::nn::AnyModule(MaxPool3d2x2x2())
          : torch::nn::AnyModule(torch::nn::MaxPool3d(torch::nn::MaxPool3dOptions(2).stride(2)));
  maxpool_conv_ = torch::nn::Sequential();
  maxpool_conv_->push_back("0", std::move(pool));
  maxpool_conv_->push_back("1", DoubleConv(in_channels, out_channels, group_norm_groups, backend, norm_backend));
  register_module("maxpool_conv", maxpool_conv_);
}

torch::Tensor DownImpl::forward(const torch::Tensor& x) { return maxpool_conv_->forward(x); }

UpImpl::UpImpl(int in_channels, int out_channels, int group_norm_groups, ConvBackend backend,
               NormBackend norm_backend) {
  up_ = make_conv_transpose3d(in_channels, in_channels / 2, true, backend);
  register_module("up", up_.ptr());
  conv_ = register_module("conv",
                          DoubleConv(in_channels, out_channels, group_norm_groups, backend, norm_backend));
}

torch::Tensor UpImpl::forward(const torch::Tensor& deep, const torch::Tensor& skip) {
  // upsampled: [N, in/2, D, H, W], the same spatial size as skip because the
  // U-Net only accepts sizes divisible by 2^layers, so no padding is needed.
  const torch::Tensor upsampled = up_.forward(deep);

  // Skip connection first, matching the reference channel order.
  return conv_->forward_cat(skip, upsampled);
}

OutConvImpl::OutConvImpl(int in_channels, int n_classes, ConvBackend backend) {
  conv_ = make_conv3d(in_channels, n_classes, 1, 0, true, backend);
  register_module("conv", conv_.ptr());
}

torch::Tensor OutConvImpl::forward(const torch::Tensor& x) { return conv_.forward(x); }

UNetImpl::UNetImpl(int in_channels, int n_classes, int layers, int group_norm_groups, ConvBackend backend)
    : UNetImpl(in_channels, n_classes, layers, group_norm_groups, backend,
               backend == ConvBackend::onednn ? NormBackend::fused : NormBackend::libtorch) {}

UNetImpl::UNetImpl(int in_channels, int n_classes, int layers, int group_norm_groups, ConvBackend backend,
                   NormBackend norm_backend)
    : in_channels_(in_channels),
      n_classes_(n_classes),
      layers_(layers),
      channels_last_(backend == ConvBackend::onednn) {
  if (layers < 1) {
    throw std::invalid_argument(fmt::format(
        "invalid U-Net depth: layers={} but it must be at least 1 (unet_layers = problem_scale - "
        "unet_bottleneck_dim)",
        layers));
  }
  if (in_channels < 1 || n_classes < 1) {
    throw std::invalid_argument(fmt::format(
        "invalid U-Net channels: in_channels={} n_classes={}, both must be at least 1", in_channels,
        n_classes));
  }
  if (group_norm_groups < 1 || kBaseWidth % group_norm_groups != 0) {
    throw std::invalid_argument(fmt::format(
        "invalid group_norm_groups={}: it must divide the base width {} so every GroupNorm splits "
        "its channels evenly",
        group_norm_groups, kBaseWidth));
  }

  // Register in the reference order (inc, down1.., up1.., outc) so that
  // parameters() lists tensors in the same order as the reference state dict.
  inc_ = register_module("inc", DoubleConv(in_channels, kBaseWidth, group_norm_groups, backend, norm_backend));
  for (int i = 0; i < layers; ++i) {
    const int width = kBaseWidth << i;
    downs_.push_back(register_module(fmt::format("down{}", i + 1),
                                     Down(width, 2 * width, group_norm_groups, backend, norm_backend)));
  }
  for (int i = 0; i < layers; ++i) {
    const int deep_width = kBaseWidth << (layers - i);
    ups_.push_back(register_module(fmt::format("up{}", i + 1),
                                   Up(deep_width, deep_width / 2, group_norm_groups, backend, norm_backend)));
  }
  outc_ = register_module("outc", OutConv(kBaseWidth, n_classes, backend));
}

void UNetImpl::check_input(const torch::Tensor& x) const {
  if (x.dim() != 5) {
    throw std::invalid_argument(fmt::format(
        "U-Net input must be 5-D [N, C, D, H, W], got shape {}", fmt::join(x.sizes(), "x")));
  }
  if (x.size(1) != in_channels_) {
    throw std::invalid_argument(fmt::format("U-Net input has {} channels but the model expects {}",
                                            x.size(1), in_channels_));
  }

  // Every Down block halves the size and every Up block doubles it again, so
  // each spatial size must survive `layers` exact halvings.
  const std::int64_t factor = std::int64_t{1} << layers_;
  for (int dim = 2; dim < 5; ++dim) {
    const std::int64_t size = x.size(dim);
    if (size < factor || size % factor != 0) {
      throw std::invalid_argument(fmt::format(
          "U-Net with {} layers needs spatial sizes that are positive multiples of {}, got {}x{}x{}. "
          "Lower unet_layers or use a volume size divisible by {}",
          layers_, factor, x.size(2), x.size(3), x.size(4), factor));
    }
  }
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x) {
  check_input(x);

  // skips[i]: [N, 64 * 2^i, D / 2^i, H / 2^i, W / 2^i] for i = 0..layers-1.
  std::vector<torch::Tensor> skips;
  skips.reserve(layers_);
  torch::Tensor h = inc_->forward(channels_last_ ? x.contiguous(torch::MemoryFormat::ChannelsLast3d) : x);
  for (auto& down : downs_) {
    skips.push_back(h);
    h = down->forward(h);
  }

  // h is the bottleneck [N, 64 * 2^layers, D / 2^layers, ...]. Walk back up,
  // taking the encoder outputs in reverse order as skips.
  for (int i = 0; i < layers_; ++i) {
    h = ups_[i]->forward(h, skips[layers_ - 1 - i]);
  }

  // logits: [N, n_classes, D, H, W]
  return outc_->forward(h).contiguous();
}

std::int64_t count_parameters(const UNet& net) {
  std::int64_t total = 0;
  for (const auto& parameter : net->parameters()) {
    total += parameter.numel();
  }
  return total;
}

}  // namespace scaffold
