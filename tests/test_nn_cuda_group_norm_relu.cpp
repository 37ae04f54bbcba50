// Tests of the fused GroupNorm + ReLU autograd function (src/cuda/group_norm_relu.hpp)
// against LibTorch's own group_norm and relu in float64 on the same bf16
// inputs. Built only in CUDA builds, and skipped when no GPU is visible.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "cuda/group_norm_relu.hpp"

namespace {

using scaffold::cuda::fused_group_norm_relu;
using scaffold::cuda::fused_group_norm_relu_unsupported_reason;

constexpr std::int64_t kGroups = 8;
constexpr double kEps = 1e-5;

#define SKIP_WITHOUT_CUDA()                                         \
  do {                                                              \
    if (!torch::cuda::is_available()) {                             \
      GTEST_SKIP() << "LibTorch sees no CUDA device";               \
    }                                                               \
  } while (false)

torch::Tensor channels_last_bf16(const torch::Tensor& values) {
  return values.to(torch::kCUDA, torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast3d);
}

TEST(FusedGroupNormRelu, ApplicabilityRules) {
  SKIP_WITHOUT_CUDA();
  const torch::Tensor x = channels_last_bf16(torch::randn({2, 64, 4, 4, 4}));
  EXPECT_EQ(fused_group_norm_relu_unsupported_reason(x, kGroups), "");
  EXPECT_NE(fused_group_norm_relu_unsupported_reason(x.cpu(), kGroups), "");
  EXPECT_NE(fused_group_norm_relu_unsupported_reason(x.to(torch::kFloat), kGroups), "");
  EXPECT_NE(fused_group_norm_relu_unsupported_reason(x.contiguous(), kGroups), "");  // NCDHW layout
  EXPECT_NE(fused_group_norm_relu_unsupported_reason(x, 16), "");                    // 4 channels per group
  const torch::Tensor weight = torch::ones({64}, torch::kCUDA);
  const torch::Tensor bias = torch::zeros({64}, torch::kCUDA);
  EXPECT_THROW(fused_group_norm_relu(x.contiguous(), weight, bias, kGroups, kEps), std::invalid_argument);
  EXPECT_THROW(fused_group_norm_relu(x, torch::ones({32}, torch::kCUDA), bias, kGroups, kEps), std::invalid_argument);
  EXPECT_THROW(fused_group_norm_relu(x, weight, torch::zeros({64}), kGroups, kEps), std::invalid_argument);
}

TEST(FusedGroupNormRelu, MatchesLibTorchInFloat64) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(3);
  const std::int64_t channels = 64;
  const torch::Tensor x_bf16 = channels_last_bf16(torch::randn({2, channels, 6, 5, 4}) * 1.5 + 0.3);
  const torch::Tensor dy_bf16 = channels_last_bf16(torch::randn({2, channels, 6, 5, 4}));
  const torch::Tensor weight = (torch::randn({channels}) * 0.3 + 1).to(torch::kCUDA).requires_grad_(true);
  const torch::Tensor bias = (torch::randn({channels}) * 0.2).to(torch::kCUDA).requires_grad_(true);
  const torch::Tensor x = x_bf16.detach().requires_grad_(true);

  const torch::Tensor y = fused_group_norm_relu(x, weight, bias, kGroups, kEps);
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  ASSERT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast3d));
  y.backward(dy_bf16);

  // Reference on the same bf16 values, in float64.
  const torch::Tensor x64 = x_bf16.to(torch::kDouble).detach().requires_grad_(true);
  const torch::Tensor weight64 = weight.detach().to(torch::kDouble).requires_grad_(true);
  const torch::Tensor bias64 = bias.detach().to(torch::kDouble).requires_grad_(true);
  const torch::Tensor z64 = torch::group_norm(x64, kGroups, weight64, bias64, kEps);
  const torch::Tensor y64 = torch::relu(z64);
  y64.backward(dy_bf16.to(torch::kDouble));

  // Elements whose z lies within 1e-3 of the ReLU kink may take the other
  // branch after float32 rounding, so the elementwise checks leave them out.
  const torch::Tensor clear = z64.detach().abs() > 1e-3;
  const torch::Tensor y_error = (y.to(torch::kDouble) - y64.detach()).abs();
  const torch::Tensor y_tolerance = y64.detach().abs() / 256 + 1e-3;
  EXPECT_EQ((y_error > y_tolerance).logical_and(clear).sum().item<std::int64_t>(), 0)
      << "max y error " << y_error.max().item<double>();

  const torch::Tensor dx_reference = x64.grad();
  const torch::Tensor dx_error = (x.grad().to(torch::kDouble) - dx_reference).abs();
  const torch::Tensor dx_tolerance = dx_reference.abs() / 256 + 1e-3 * dx_reference.abs().max();
  EXPECT_EQ((dx_error > dx_tolerance).logical_and(clear).sum().item<std::int64_t>(), 0)
      << "max dx error " << dx_error.max().item<double>();

  // Parameter gradients sum over every element, including the few near the
  // kink, so they get a tolerance relative to their largest value.
  EXPECT_EQ(weight.grad().scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::allclose(weight.grad().to(torch::kDouble), weight64.grad(), 1e-2,
                              1e-2 * weight64.grad().abs().max().item<double>()));
  EXPECT_TRUE(torch::allclose(bias.grad().to(torch::kDouble), bias64.grad(), 1e-2,
                              1e-2 * bias64.grad().abs().max().item<double>()));
}

TEST(FusedGroupNormRelu, Bfloat16ParametersGetBfloat16Gradients) {
  SKIP_WITHOUT_CUDA();
  const torch::Tensor x = channels_last_bf16(torch::randn({1, 64, 4, 4, 4})).requires_grad_(true);
  const torch::Tensor weight = torch::ones({64}, torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16))
                                   .requires_grad_(true);
  const torch::Tensor bias = torch::zeros({64}, torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16))
                                 .requires_grad_(true);
  fused_group_norm_relu(x, weight, bias, kGroups, kEps).sum().backward();
  EXPECT_EQ(weight.grad().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bias.grad().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
}

}  // namespace
