// nn/onednn_conv.hpp for builds without oneDNN (SCAFFOLD_WITH_ONEDNN=OFF,
// the default in CUDA builds): make_conv3d and make_conv_transpose3d build
// LibTorch's own modules, and everything that needs oneDNN throws
// std::runtime_error saying how to enable it.
#include "nn/onednn_conv.hpp"

#include <ostream>
#include <stdexcept>
#include <string>

#include <torch/nn/modules/conv.h>

namespace scaffold {

namespace {

[[noreturn]] void throw_without_onednn(const char* what) {
  throw std::runtime_error(std::string(what) +
                           ": the oneDNN convolution backend is not available in this build. Use "
                           "conv_backend: libtorch, or reconfigure with -DSCAFFOLD_WITH_ONEDNN=ON "
                           "(needs libdnnl-dev)");
}

}  // namespace

torch::Tensor onednn_conv3d(const torch::Tensor& /*input*/, const torch::Tensor& /*weight*/,
                            const c10::optional<torch::Tensor>& /*bias*/, std::int64_t /*padding*/) {
  throw_without_onednn("onednn_conv3d");
}

torch::Tensor onednn_conv_transpose3d(const torch::Tensor& /*input*/, const torch::Tensor& /*weight*/,
                                      const c10::optional<torch::Tensor>& /*bias*/) {
  throw_without_onednn("onednn_conv_transpose3d");
}

std::size_t onednn_conv_cache_size() { return 0; }

OnednnConv3dImpl::OnednnConv3dImpl(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel_size,
                                   std::int64_t padding, bool /*bias*/)
    : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), padding_(padding) {
  throw_without_onednn("OnednnConv3d");
}

torch::Tensor OnednnConv3dImpl::forward(const torch::Tensor& /*x*/) { throw_without_onednn("OnednnConv3d"); }

void OnednnConv3dImpl::reset_parameters() { throw_without_onednn("OnednnConv3d"); }

void OnednnConv3dImpl::pretty_print(std::ostream& stream) const { stream << "scaffold::OnednnConv3d(unavailable)"; }

OnednnConvTranspose3dImpl::OnednnConvTranspose3dImpl(std::int64_t in_channels, std::int64_t out_channels,
                                                     bool /*bias*/)
    : in_channels_(in_channels), out_channels_(out_channels) {
  throw_without_onednn("OnednnConvTranspose3d");
}

torch::Tensor OnednnConvTranspose3dImpl::forward(const torch::Tensor& /*x*/) {
  throw_without_onednn("OnednnConvTranspose3d");
}

void OnednnConvTranspose3dImpl::reset_parameters() { throw_without_onednn("OnednnConvTranspose3d"); }

void OnednnConvTranspose3dImpl::pretty_print(std::ostream& stream) const {
  stream << "scaffold::OnednnConvTranspose3d(unavailable)";
}

torch::nn::AnyModule make_conv3d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel_size,
                                 std::int64_t padding, bool bias, ConvBackend backend) {
  if (backend == ConvBackend::onednn) {
    throw_without_onednn("make_conv3d");
  }
  return torch::nn::AnyModule(torch::nn::Conv3d(
      torch::nn::Conv3dOptions(in_channels, out_channels, kernel_size).padding(padding).bias(bias)));
}

torch::nn::AnyModule make_conv_transpose3d(std::int64_t in_channels, std::int64_t out_channels, bool bias,
                                           ConvBackend backend) {
  if (backend == ConvBackend::onednn) {
    throw_without_onednn("make_conv_transpose3d");
  }
  return torch::nn::AnyModule(torch::nn::ConvTranspose3d(
      torch::nn::ConvTranspose3dOptions(in_channels, out_channels, 2).stride(2).bias(bias)));
}

}  // namespace scaffold
