// Tests of the fused GroupNorm + ReLU. The output and the gradients of input,
// weight and bias are compared with torch::relu(torch::group_norm(...)) in
// float32 and float64, for contiguous and channels-last inputs. Further tests
// cover exact ReLU thresholds, bitwise equality across thread counts, the
// layouts of outputs and gradients, the fallbacks, input checks, the module,
// and a whole U-Net on the fused path against LibTorch's GroupNorm + ReLU.
//
// Tolerances: every comparison divides the maximum absolute difference by the
// maximum absolute value of the reference tensor. kTolerance = 1e-5 applies
// against the float64 reference and against LibTorch's float32 kernels. The
// output is a few float32 roundings from the float64 statistics, and the
// gradients add float32 products in lanes of at most 128 terms before summing
// in float64. The largest error measured on these cases was 1.5e-6, on the
// large group with an offset mean, where LibTorch's own float32 output is
// 1.5e-6 from float64. So 1e-5 leaves headroom, while a wrong index, group or
// mask gives errors of order 1. The one exception is noted in
// LargeGroupWithOffsetMean. The channels-last kernels sum in another order
// than the contiguous ones but with the same float32 partial sums of at most
// 128 terms, so the same tolerance applies to them and between the two.
//
// Upstream gradients are set to zero where the float64 pre-activation lies
// within kThresholdBand of 0. Float32 rounding may put those few elements on
// either side of the ReLU threshold, where LibTorch's float32 result is no more
// right than the fused one, and the gradient of one such element is of order
// 1. The exact-threshold test covers the threshold itself with exact inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "nn/groupnorm_relu.hpp"
#include "nn/unet.hpp"

namespace {

constexpr double kTolerance = 1e-5;
constexpr double kThresholdBand = 1e-4;
constexpr double kEps = 1e-5;

using scaffold::group_norm_relu;

// Maximum absolute difference relative to the reference's largest magnitude.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const torch::Tensor reference = expected.to(torch::kFloat64);
  const double scale = reference.abs().max().item<double>();
  const double difference = (actual.to(torch::kFloat64) - reference).abs().max().item<double>();
  return scale > 0.0 ? difference / scale : difference;
}

// Output and gradients of one forward + backward.
struct Results {
  torch::Tensor output;
  torch::Tensor grad_input;
  torch::Tensor grad_weight;
  torch::Tensor grad_bias;
};

enum class Implementation { fused, libtorch };

Results run(Implementation implementation, const torch::Tensor& input, std::int64_t groups,
            const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& grad_output) {
  const torch::Tensor x = input.detach().clone().requires_grad_(true);
  const torch::Tensor w = weight.detach().clone().requires_grad_(true);
  const torch::Tensor b = bias.detach().clone().requires_grad_(true);
  const torch::Tensor y = implementation == Implementation::fused
                              ? group_norm_relu(x, groups, w, b, kEps)
                              : torch::relu(torch::group_norm(x, groups, w, b, kEps));
  const auto grads = torch::autograd::grad({y}, {x, w, b}, {grad_output.to(y.scalar_type())});
  return {y.detach(), grads[0], grads[1], grads[2]};
}

// Affine parameters with negative values, one zero gamma and a spread of betas.
std::pair<torch::Tensor, torch::Tensor> make_affine(std::int64_t channels) {
  torch::Tensor weight = torch::empty({channels}).uniform_(-1.5, 1.5);
  weight[0] = -0.75;
  weight[channels > 1 ? 1 : 0] = 0.0;
  const torch::Tensor bias = torch::empty({channels}).uniform_(-0.5, 0.5);
  return {weight, bias};
}

// Random upstream gradient, zero where the float64 pre-activation is within
// kThresholdBand of the ReLU threshold.
torch::Tensor make_grad_output(const torch::Tensor& input, std::int64_t groups, const torch::Tensor& weight,
                               const torch::Tensor& bias) {
  const torch::Tensor pre_activation = torch::group_norm(input.to(torch::kFloat64), groups,
                                                         weight.to(torch::kFloat64), bias.to(torch::kFloat64), kEps);
  const torch::Tensor grad_output = torch::randn(input.sizes());
  return torch::where(pre_activation.abs() < kThresholdBand, torch::zeros_like(grad_output), grad_output);
}

void expect_close(const Results& actual, const Results& expected, const std::string& label,
                  double grad_weight_tolerance = kTolerance) {
  EXPECT_LT(relative_error(actual.output, expected.output), kTolerance) << label << " output";
  EXPECT_LT(relative_error(actual.grad_input, expected.grad_input), kTolerance) << label << " grad_input";
  EXPECT_LT(relative_error(actual.grad_weight, expected.grad_weight), grad_weight_tolerance)
      << label << " grad_weight";
  EXPECT_LT(relative_error(actual.grad_bias, expected.grad_bias), kTolerance) << label << " grad_bias";
}

// Compares the fused operation with LibTorch in float32 and float64 and
// returns the fused results.
Results expect_matches_libtorch(const torch::Tensor& input, std::int64_t groups, const std::string& label,
                                double libtorch_float_grad_weight_tolerance = kTolerance) {
  const auto [weight, bias] = make_affine(input.size(1));
  const torch::Tensor grad_output = make_grad_output(input, groups, weight, bias);

  const Results fused = run(Implementation::fused, input, groups, weight, bias, grad_output);
  const Results libtorch_float = run(Implementation::libtorch, input, groups, weight, bias, grad_output);
  const Results libtorch_double =
      run(Implementation::libtorch, input.to(torch::kFloat64), groups, weight.to(torch::kFloat64),
          bias.to(torch::kFloat64), grad_output);

  EXPECT_EQ(fused.output.sizes(), input.sizes()) << label;
  EXPECT_EQ(fused.output.scalar_type(), torch::kFloat32) << label;
  EXPECT_GE(fused.output.min().item<float>(), 0.0f) << label;
  expect_close(fused, libtorch_double, label + " vs float64");
  expect_close(fused, libtorch_float, label + " vs float32", libtorch_float_grad_weight_tolerance);
  return fused;
}

// The channels-last memory format of a 4-D or 5-D tensor.
torch::MemoryFormat channels_last_format(const torch::Tensor& tensor) {
  return tensor.dim() == 5 ? torch::MemoryFormat::ChannelsLast3d : torch::MemoryFormat::ChannelsLast;
}

torch::Tensor to_channels_last(const torch::Tensor& tensor) {
  return tensor.contiguous(channels_last_format(tensor));
}

// Checks that the output and input gradient have the channels-last layout of
// input and not the plain one.
void expect_channels_last_results(const Results& results, const torch::Tensor& input, const std::string& label) {
  const torch::MemoryFormat format = channels_last_format(input);
  EXPECT_TRUE(results.output.is_contiguous(format)) << label << " output strides " << results.output.strides();
  EXPECT_FALSE(results.output.is_contiguous()) << label << " output";
  EXPECT_TRUE(results.grad_input.is_contiguous(format))
      << label << " grad_input strides " << results.grad_input.strides();
  EXPECT_FALSE(results.grad_input.is_contiguous()) << label << " grad_input";
}

std::string shape_label(const std::vector<std::int64_t>& shape, std::int64_t groups) {
  return fmt::format("shape [{}] groups {}", fmt::join(shape, ", "), groups);
}

class GroupNormReLUTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(2);
    torch::manual_seed(2024);
  }
};

TEST_F(GroupNormReLUTest, MatchesLibtorchOnOddShapes) {
  struct Case {
    std::vector<std::int64_t> shape;
    std::int64_t groups;
  };
  const std::vector<Case> cases = {
      {{2, 6, 3, 5, 7}, 3},      // C not a multiple of 8
      {{2, 12, 3, 5, 7}, 4},     //
      {{2, 6, 3, 5, 7}, 1},      // one group over all channels
      {{2, 6, 3, 5, 7}, 6},      // one channel per group
      {{2, 12, 5, 4, 3}, 12},    //
      {{2, 6, 37}, 2},           // one spatial dimension
      {{2, 6, 9, 11}, 3},        // two spatial dimensions
      {{2, 4, 13, 17, 19}, 2},   // planes of 4199: a full chunk and a 103-element tail
      {{1, 2, 16, 16, 33}, 1},   // planes of 8448: three chunks per plane
  };
  for (const Case& test_case : cases) {
    const torch::Tensor input = torch::randn(test_case.shape) * 1.7 + 0.3;
    expect_matches_libtorch(input, test_case.groups,
                            fmt::format("shape [{}] groups {}", fmt::join(test_case.shape, ", "), test_case.groups));
  }
}

TEST_F(GroupNormReLUTest, LargeGroupWithOffsetMean) {
  // 262144 elements in one group, with a mean 80 standard deviations away
  // from 0. A float32 sum of squares would cancel most of the variance.
  //
  // LibTorch 1.13's float32 backward forms dgamma from sum(dy * x) and
  // mean * sum(dy), which cancel here: its grad_weight is 7e-5 to 1.3e-4 from
  // float64, while the fused one stays within kTolerance of float64. So only
  // that comparison gets 1e-3.
  const torch::Tensor input = torch::randn({1, 8, 32, 32, 32}) * 0.5 + 40.0;
  expect_matches_libtorch(input, 1, "1x8x32x32x32 groups 1", 1e-3);
  expect_matches_libtorch(input, 8, "1x8x32x32x32 groups 8", 1e-3);
}

TEST_F(GroupNormReLUTest, ExactThresholdInputs) {
  // x contains small integers, and each (n, group) contains every value
  // together with its negation, so the group mean is exactly 0 and about a
  // fifth of the inputs are exactly 0. With beta = 0 their pre-activation
  // (0 - 0) * scale + 0 is exactly 0, which ReLU must map to output 0 and
  // gradient 0. The channel with gamma = 0 is at the threshold everywhere.
  // The reference is float64 with the exact mask, not LibTorch float32: its
  // float32 mean is not exactly 0, and on one run it gave 134 of these inputs
  // a tiny positive output and therefore a gradient.
  constexpr std::int64_t kBatch = 2;
  constexpr std::int64_t kChannels = 6;
  constexpr std::int64_t kGroups = 3;
  const std::vector<std::int64_t> spatial = {3, 5, 8};
  const std::int64_t group_elements = kChannels / kGroups * 3 * 5 * 8;
  std::vector<torch::Tensor> blocks;
  for (std::int64_t block = 0; block < kBatch * kGroups; ++block) {
    const torch::Tensor half = torch::randint(-2, 3, {group_elements / 2});
    const torch::Tensor values = torch::cat({half, -half});
    blocks.push_back(values.index_select(0, torch::randperm(group_elements)));
  }
  const torch::Tensor input =
      torch::stack(blocks).to(torch::kFloat32).reshape({kBatch, kChannels, spatial[0], spatial[1], spatial[2]});
  const torch::Tensor weight = torch::tensor({1.5f, 0.0f, -2.0f, 0.5f, -0.25f, 3.0f});
  const torch::Tensor bias = torch::zeros({kChannels});
  const torch::Tensor grad_output = torch::randn(input.sizes());

  // Expected values in float64: GroupNorm by autograd times the exact ReLU
  // mask sign(x * gamma) > 0, held constant.
  const torch::Tensor mask = (input * weight.view({1, -1, 1, 1, 1}) > 0).to(torch::kFloat64);
  const torch::Tensor x64 = input.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor w64 = weight.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor b64 = bias.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor y64 = torch::group_norm(x64, kGroups, w64, b64, kEps) * mask;
  const auto grads64 = torch::autograd::grad({y64}, {x64, w64, b64}, {grad_output.to(torch::kFloat64)});
  const Results expected{y64.detach(), grads64[0], grads64[1], grads64[2]};

  const torch::Tensor at_threshold = input * weight.view({1, -1, 1, 1, 1}) == 0;
  ASSERT_GT(at_threshold.sum().item<std::int64_t>(), input.numel() / 4);

  // The channels-last kernels sum the small integers exactly too, so the
  // same holds for them.
  for (const torch::MemoryFormat format : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast3d}) {
    const std::string label =
        format == torch::MemoryFormat::Contiguous ? "exact threshold, contiguous" : "exact threshold, channels-last";
    const Results fused = run(Implementation::fused, input.contiguous(format), kGroups, weight, bias, grad_output);
    EXPECT_EQ(fused.output.masked_select(mask == 0).abs().max().item<float>(), 0.0f) << label;
    expect_close(fused, expected, label);
    EXPECT_EQ(fused.grad_bias[1].item<float>(), 0.0f) << label;
    EXPECT_EQ(fused.grad_weight[1].item<float>(), 0.0f) << label;
  }
}

TEST_F(GroupNormReLUTest, BiasGradientCountsActiveOutputs) {
  // With dy = 1, dbeta[c] is the number of outputs of channel c that are
  // greater than 0, so the mask recomputed in backward must match the forward
  // output exactly. The float sums of ones are exact below 2^24.
  for (const auto& [shape, groups] : std::vector<std::pair<std::vector<std::int64_t>, std::int64_t>>{
           {{2, 12, 3, 5, 7}, 4}, {{1, 8, 32, 32, 32}, 8}, {{2, 4, 13, 17, 19}, 2}, {{2, 24, 3, 9, 10}, 8}}) {
    for (const torch::MemoryFormat format : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast3d}) {
      const torch::Tensor input = torch::randn(shape).contiguous(format);
      const auto [weight, bias] = make_affine(shape[1]);
      const Results fused =
          run(Implementation::fused, input, groups, weight, bias, torch::ones(shape).contiguous(format));
      std::vector<std::int64_t> reduce_dims = {0};
      for (std::int64_t dim = 2; dim < static_cast<std::int64_t>(shape.size()); ++dim) {
        reduce_dims.push_back(dim);
      }
      const torch::Tensor active_per_channel = (fused.output > 0).sum(reduce_dims).to(torch::kFloat32);
      EXPECT_TRUE(torch::equal(fused.grad_bias, active_per_channel))
          << shape_label(shape, groups) << " " << format << "\n"
          << fused.grad_bias << "\n"
          << active_per_channel;
    }
  }
}

TEST_F(GroupNormReLUTest, ThreadCountDoesNotChangeBits) {
  // Every work item is summed by one thread in a fixed order and the items
  // are combined in a fixed order, so the results are bitwise equal.
  for (const auto& [shape, groups] : std::vector<std::pair<std::vector<std::int64_t>, std::int64_t>>{
           {{2, 12, 3, 5, 7}, 4}, {{1, 8, 32, 32, 32}, 8}, {{1, 2, 64, 64, 16}, 1}}) {
    const torch::Tensor input = torch::randn(shape) + 0.5;
    const auto [weight, bias] = make_affine(shape[1]);
    const torch::Tensor grad_output = torch::randn(shape);

    torch::set_num_threads(1);
    const Results one_thread = run(Implementation::fused, input, groups, weight, bias, grad_output);
    torch::set_num_threads(2);
    const Results two_threads = run(Implementation::fused, input, groups, weight, bias, grad_output);

    const std::string label = fmt::format("shape [{}]", fmt::join(shape, ", "));
    EXPECT_TRUE(torch::equal(one_thread.output, two_threads.output)) << label;
    EXPECT_TRUE(torch::equal(one_thread.grad_input, two_threads.grad_input)) << label;
    EXPECT_TRUE(torch::equal(one_thread.grad_weight, two_threads.grad_weight)) << label;
    EXPECT_TRUE(torch::equal(one_thread.grad_bias, two_threads.grad_bias)) << label;
  }
}

TEST_F(GroupNormReLUTest, Float64FallsBackToLibtorch) {
  const torch::Tensor input = torch::randn({2, 6, 3, 5, 7}, torch::kFloat64);
  const auto [weight, bias] = make_affine(6);
  const torch::Tensor grad_output = torch::randn(input.sizes(), torch::kFloat64);
  const Results fused = run(Implementation::fused, input, 3, weight.to(torch::kFloat64), bias.to(torch::kFloat64),
                            grad_output);
  const Results libtorch = run(Implementation::libtorch, input, 3, weight.to(torch::kFloat64),
                               bias.to(torch::kFloat64), grad_output);
  EXPECT_EQ(fused.output.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(fused.output, libtorch.output));
  EXPECT_TRUE(torch::equal(fused.grad_input, libtorch.grad_input));
  EXPECT_TRUE(torch::equal(fused.grad_weight, libtorch.grad_weight));
}

TEST_F(GroupNormReLUTest, NonContiguousInputIsCopied) {
  // A view with D and W swapped is neither contiguous nor channels-last, so
  // the contiguous kernels run on a copy and give the same bits.
  const torch::Tensor contiguous = torch::randn({2, 6, 3, 5, 7});
  const torch::Tensor swapped = contiguous.transpose(2, 4).contiguous().transpose(2, 4);
  ASSERT_FALSE(swapped.is_contiguous());
  ASSERT_FALSE(swapped.is_contiguous(torch::MemoryFormat::ChannelsLast3d));
  const auto [weight, bias] = make_affine(6);
  const torch::Tensor grad_output = torch::randn(contiguous.sizes());
  const Results from_contiguous = run(Implementation::fused, contiguous, 3, weight, bias, grad_output);
  const Results from_swapped = run(Implementation::fused, swapped, 3, weight, bias, grad_output);
  EXPECT_TRUE(from_swapped.output.is_contiguous());
  EXPECT_TRUE(torch::equal(from_contiguous.output, from_swapped.output));
  EXPECT_TRUE(torch::equal(from_contiguous.grad_input, from_swapped.grad_input));
  EXPECT_TRUE(torch::equal(from_contiguous.grad_weight, from_swapped.grad_weight));
}

TEST_F(GroupNormReLUTest, NanPropagatesWithinGroup) {
  torch::Tensor input = torch::randn({1, 4, 2, 3, 4});
  input[0][1][1][2][3] = std::numeric_limits<float>::quiet_NaN();
  const torch::Tensor output = group_norm_relu(input, 2, torch::ones({4}), torch::zeros({4}), kEps);

  // Channels 0 and 1 form the group with the NaN; channels 2 and 3 do not.
  EXPECT_TRUE(torch::isnan(output.slice(1, 0, 2)).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(output.slice(1, 2, 4)).all().item<bool>());
}

TEST_F(GroupNormReLUTest, ChannelsLastMatchesLibtorch) {
  // Spatial sizes of 210, 270 and 990 voxels are not multiples of the
  // 128-voxel chunks of the channels-last kernels, and 12 and 24 channels are
  // not multiples of a vector width. LibTorch gets the same channels-last
  // tensor.
  struct Case {
    std::vector<std::int64_t> shape;
    std::int64_t groups;
  };
  const std::vector<Case> cases = {
      {{2, 12, 5, 6, 7}, 3},     // a full chunk and an 82-voxel tail
      {{2, 24, 3, 9, 10}, 8},    // 3 channels per group
      {{1, 8, 9, 10, 11}, 2},    // 7 full chunks and a 94-voxel tail
      {{2, 6, 3, 5, 7}, 1},      // one group over all channels
      {{2, 12, 4, 5, 6}, 12},    // one channel per group
      {{2, 12, 9, 11}, 4},       // 4-D ChannelsLast
      {{2, 64, 8, 8, 8}, 8},     // a U-Net width
  };
  for (const Case& test_case : cases) {
    const torch::Tensor input = to_channels_last(torch::randn(test_case.shape) * 1.7 + 0.3);
    ASSERT_FALSE(input.is_contiguous());
    const std::string label = "channels-last " + shape_label(test_case.shape, test_case.groups);
    const Results fused = expect_matches_libtorch(input, test_case.groups, label);
    expect_channels_last_results(fused, input, label);
  }
}

TEST_F(GroupNormReLUTest, ChannelsLastMatchesContiguousKernels) {
  // The same values in both layouts, with the same parameters and upstream
  // gradient, so the two fused kernels differ only in summation order.
  for (const auto& [shape, groups] : std::vector<std::pair<std::vector<std::int64_t>, std::int64_t>>{
           {{2, 24, 3, 9, 10}, 8}, {{2, 12, 5, 6, 7}, 3}, {{1, 64, 16, 16, 16}, 8}}) {
    const torch::Tensor input = torch::randn(shape) * 1.3 - 0.4;
    const auto [weight, bias] = make_affine(shape[1]);
    const torch::Tensor grad_output = make_grad_output(input, groups, weight, bias);
    const Results contiguous = run(Implementation::fused, input, groups, weight, bias, grad_output);
    const Results channels_last = run(Implementation::fused, to_channels_last(input), groups, weight, bias,
                                      to_channels_last(grad_output));
    const std::string label = shape_label(shape, groups);
    EXPECT_TRUE(contiguous.output.is_contiguous()) << label;
    EXPECT_TRUE(contiguous.grad_input.is_contiguous()) << label;
    expect_channels_last_results(channels_last, input, label);
    expect_close(channels_last, contiguous, label + " channels-last vs contiguous");
  }
}

TEST_F(GroupNormReLUTest, ChannelsLastLargeGroupWithOffsetMean) {
  // The accuracy case of LargeGroupWithOffsetMean for the channels-last
  // kernels, which keep the per-chunk centering of the contiguous ones.
  //
  // LibTorch 1.13's float32 GroupNorm on a ChannelsLast3d tensor loses most
  // of the variance here: its output was 2e-3 to 7e-3 from float64 and its
  // input gradient 0.3 to 0.4. So the float32 reference runs on the
  // contiguous tensor, with the 1e-3 for grad_weight that
  // LargeGroupWithOffsetMean explains.
  const torch::Tensor input = torch::randn({1, 8, 32, 32, 32}) * 0.5 + 40.0;
  const torch::Tensor channels_last = to_channels_last(input);
  for (const std::int64_t groups : {1, 8}) {
    const std::string label = fmt::format("channels-last 1x8x32x32x32 groups {}", groups);
    const auto [weight, bias] = make_affine(8);
    const torch::Tensor grad_output = make_grad_output(input, groups, weight, bias);
    const Results fused =
        run(Implementation::fused, channels_last, groups, weight, bias, to_channels_last(grad_output));
    const Results libtorch_float = run(Implementation::libtorch, input, groups, weight, bias, grad_output);
    const Results libtorch_double =
        run(Implementation::libtorch, input.to(torch::kFloat64), groups, weight.to(torch::kFloat64),
            bias.to(torch::kFloat64), grad_output);
    expect_channels_last_results(fused, channels_last, label);
    expect_close(fused, libtorch_double, label + " vs float64");
    expect_close(fused, libtorch_float, label + " vs contiguous float32", 1e-3);
  }
}

TEST_F(GroupNormReLUTest, ChannelsLastThreadCountDoesNotChangeBits) {
  // Batch 1 with 64 channels at 32^3 is 256 chunks, spread over all threads.
  for (const auto& [shape, groups] : std::vector<std::pair<std::vector<std::int64_t>, std::int64_t>>{
           {{2, 12, 5, 6, 7}, 3}, {{1, 24, 9, 10, 11}, 8}, {{1, 64, 32, 32, 32}, 8}}) {
    const torch::Tensor input = to_channels_last(torch::randn(shape) + 0.5);
    const auto [weight, bias] = make_affine(shape[1]);
    const torch::Tensor grad_output = to_channels_last(torch::randn(shape));

    torch::set_num_threads(1);
    const Results one_thread = run(Implementation::fused, input, groups, weight, bias, grad_output);
    for (const int threads : {2, 3}) {
      torch::set_num_threads(threads);
      const Results other = run(Implementation::fused, input, groups, weight, bias, grad_output);
      const std::string label = fmt::format("{} with {} threads", shape_label(shape, groups), threads);
      expect_channels_last_results(other, input, label);
      EXPECT_TRUE(torch::equal(one_thread.output, other.output)) << label;
      EXPECT_TRUE(torch::equal(one_thread.grad_input, other.grad_input)) << label;
      EXPECT_TRUE(torch::equal(one_thread.grad_weight, other.grad_weight)) << label;
      EXPECT_TRUE(torch::equal(one_thread.grad_bias, other.grad_bias)) << label;
    }
  }
}

TEST_F(GroupNormReLUTest, ChannelsLastAcceptsOtherGradOutputLayouts) {
  // A plain grad_output and a broadcast one are copied to channels-last once,
  // so they give the same bits as a channels-last grad_output with the same
  // values.
  const std::vector<std::int64_t> shape = {2, 12, 5, 6, 7};
  const torch::Tensor input = to_channels_last(torch::randn(shape));
  const auto [weight, bias] = make_affine(12);
  const torch::Tensor grad_output = torch::randn(shape);
  ASSERT_TRUE(grad_output.is_contiguous());
  const Results from_plain = run(Implementation::fused, input, 3, weight, bias, grad_output);
  const Results from_channels_last = run(Implementation::fused, input, 3, weight, bias, to_channels_last(grad_output));
  expect_channels_last_results(from_plain, input, "plain grad_output");
  EXPECT_TRUE(torch::equal(from_plain.grad_input, from_channels_last.grad_input));
  EXPECT_TRUE(torch::equal(from_plain.grad_weight, from_channels_last.grad_weight));
  EXPECT_TRUE(torch::equal(from_plain.grad_bias, from_channels_last.grad_bias));

  const torch::Tensor broadcast = torch::full({1}, 0.5f).expand(shape);
  const Results from_broadcast = run(Implementation::fused, input, 3, weight, bias, broadcast);
  const Results from_filled =
      run(Implementation::fused, input, 3, weight, bias, to_channels_last(torch::full(shape, 0.5f)));
  expect_channels_last_results(from_broadcast, input, "broadcast grad_output");
  EXPECT_TRUE(torch::equal(from_broadcast.grad_input, from_filled.grad_input));
  EXPECT_TRUE(torch::equal(from_broadcast.grad_weight, from_filled.grad_weight));
}

TEST_F(GroupNormReLUTest, ChannelsLastOneSpatialDimension) {
  // [N, C, L] with C innermost, a transposed [N, L, C] tensor, runs the
  // channels-last kernels: the output keeps its strides instead of being
  // contiguous.
  const torch::Tensor input = torch::randn({2, 300, 12}).transpose(1, 2);
  ASSERT_FALSE(input.is_contiguous());
  const Results fused = expect_matches_libtorch(input, 4, "channels-last [2, 12, 300] groups 4");
  EXPECT_EQ(fused.output.strides(), input.strides());
  EXPECT_EQ(fused.grad_input.strides(), input.strides());
}

TEST_F(GroupNormReLUTest, ChannelsLastNanPropagatesWithinGroup) {
  torch::Tensor input = torch::randn({1, 4, 2, 3, 4});
  input[0][1][1][2][3] = std::numeric_limits<float>::quiet_NaN();
  const torch::Tensor output =
      group_norm_relu(to_channels_last(input), 2, torch::ones({4}), torch::zeros({4}), kEps);

  // Channels 0 and 1 form the group with the NaN, and channels 2 and 3 do not.
  EXPECT_TRUE(torch::isnan(output.slice(1, 0, 2)).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(output.slice(1, 2, 4)).all().item<bool>());
}

TEST_F(GroupNormReLUTest, RejectsInvalidArguments) {
  const torch::Tensor input = torch::randn({2, 6, 4, 4});
  const torch::Tensor ones = torch::ones({6});
  const torch::Tensor zeros = torch::zeros({6});
  EXPECT_THROW(group_norm_relu(torch::randn({2, 6}), 3, ones, zeros, kEps), std::invalid_argument);
  EXPECT_THROW(group_norm_relu(input, 4, ones, zeros, kEps), std::invalid_argument);
  EXPECT_THROW(group_norm_relu(input, 0, ones, zeros, kEps), std::invalid_argument);
  EXPECT_THROW(group_norm_relu(input, 3, torch::ones({5}), zeros, kEps), std::invalid_argument);
  EXPECT_THROW(group_norm_relu(input, 3, ones, torch::zeros({6, 1}), kEps), std::invalid_argument);
  EXPECT_THROW(group_norm_relu(input, 3, ones, zeros, -1.0), std::invalid_argument);

  try {
    group_norm_relu(input, 4, ones, zeros, kEps);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("groups=4"), std::string::npos) << error.what();
  }
}

TEST_F(GroupNormReLUTest, DoubleBackwardThrows) {
  const torch::Tensor x = torch::randn({1, 4, 3, 3, 3}).requires_grad_(true);
  const torch::Tensor y = group_norm_relu(x, 2, torch::ones({4}), torch::zeros({4}), kEps);
  EXPECT_THROW(torch::autograd::grad({y.sum()}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true),
               std::runtime_error);
}

TEST_F(GroupNormReLUTest, ModuleHoldsGroupNormParameters) {
  scaffold::GroupNormReLU fused(4, 12);
  torch::nn::GroupNorm stock(torch::nn::GroupNormOptions(4, 12).eps(kEps));
  const auto fused_params = fused->named_parameters();
  const auto stock_params = stock->named_parameters();
  ASSERT_EQ(fused_params.keys(), stock_params.keys());
  for (const auto& item : stock_params) {
    EXPECT_TRUE(torch::equal(item.value(), *fused_params.find(item.key()))) << item.key();
  }
  EXPECT_THROW(scaffold::GroupNormReLU(5, 12), std::invalid_argument);

  const torch::Tensor x = torch::randn({2, 12, 3, 4, 5});
  torch::NoGradGuard no_grad;
  fused->weight.uniform_(-1.0, 1.0);
  stock->weight.copy_(fused->weight);
  EXPECT_LT(relative_error(fused->forward(x), torch::relu(stock->forward(x))), kTolerance);
}

// Builds the 2-level U-Net used by the comparisons below, with the same
// parameters for every backend.
scaffold::UNet make_unet(scaffold::ConvBackend conv_backend, scaffold::NormBackend norm_backend) {
  torch::manual_seed(11);
  scaffold::UNet net(3, 4, 2, 8, conv_backend, norm_backend);

  // GroupNorm affine parameters away from 1 and 0, so that the comparison
  // covers them.
  torch::NoGradGuard no_grad;
  torch::manual_seed(12);
  for (auto& item : net->named_parameters()) {
    if (item.value().dim() == 1) {
      item.value().uniform_(-0.5, 1.5);
    }
  }
  return net;
}

TEST(UNetFusedNorm, ParametersMatchStockPath) {
  const scaffold::UNet stock = make_unet(scaffold::ConvBackend::libtorch, scaffold::NormBackend::libtorch);
  const scaffold::UNet fused = make_unet(scaffold::ConvBackend::libtorch, scaffold::NormBackend::fused);
  const auto stock_params = stock->named_parameters();
  const auto fused_params = fused->named_parameters();
  ASSERT_EQ(stock_params.keys(), fused_params.keys());
  for (const auto& item : stock_params) {
    EXPECT_TRUE(torch::equal(item.value(), *fused_params.find(item.key()))) << item.key();
  }
  EXPECT_EQ(scaffold::count_parameters(stock), scaffold::count_parameters(fused));
  EXPECT_NE(fused_params.find("down2.maxpool_conv.1.double_conv.4.weight"), nullptr);
}

TEST(UNetFusedNorm, ConvBackendSelectsNormBackend) {
  const scaffold::UNet onednn(3, 4, 1, 8, scaffold::ConvBackend::onednn);
  const scaffold::UNet libtorch(3, 4, 1, 8, scaffold::ConvBackend::libtorch);
  const auto onednn_modules = onednn->named_modules();
  const auto libtorch_modules = libtorch->named_modules();
  for (const char* name : {"inc.double_conv.1", "up1.conv.double_conv.4"}) {
    ASSERT_NE(onednn_modules.find(name), nullptr) << name;
    ASSERT_NE(libtorch_modules.find(name), nullptr) << name;
    EXPECT_NE((*onednn_modules.find(name))->as<scaffold::GroupNormReLUImpl>(), nullptr) << name;
    EXPECT_NE((*libtorch_modules.find(name))->as<torch::nn::GroupNormImpl>(), nullptr) << name;
  }
}

TEST(UNetFusedNorm, ForwardBackwardMatchesStockPath) {
  torch::set_num_threads(2);
  scaffold::UNet stock = make_unet(scaffold::ConvBackend::libtorch, scaffold::NormBackend::libtorch);
  scaffold::UNet fused = make_unet(scaffold::ConvBackend::libtorch, scaffold::NormBackend::fused);

  // A non-cubic batch of 2. Outputs near a ReLU threshold may switch side
  // between the paths, so gradients get the 1e-3 tolerance of the other
  // backend comparison, relative to each tensor's largest magnitude.
  torch::manual_seed(13);
  const torch::Tensor x = torch::rand({2, 3, 8, 16, 12});
  const torch::Tensor y_stock = stock->forward(x);
  const torch::Tensor y_fused = fused->forward(x);
  EXPECT_LT(relative_error(y_fused, y_stock), 1e-4);

  (y_stock * y_stock).sum().backward();
  (y_fused * y_fused).sum().backward();
  const auto stock_params = stock->named_parameters();
  const auto fused_params = fused->named_parameters();
  for (const auto& item : stock_params) {
    const torch::Tensor& expected = item.value().grad();
    const torch::Tensor& actual = fused_params.find(item.key())->grad();
    ASSERT_TRUE(actual.defined()) << item.key();
    EXPECT_LT(relative_error(actual, expected), 1e-3) << item.key();
  }
}

}  // namespace
