// Tests of max_pool3d_2x2x2. Max pooling only selects values, so every
// comparison is exact. Outputs and input gradients are compared bit for bit,
// through an int32 view so that NaN payloads and the sign of zero count. The
// references are torch::max_pool3d on the same input and hand-worked
// expectations for ties, signed zeros, infinities and NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "nn/max_pool.hpp"

namespace {

using scaffold::max_pool3d_2x2x2;

constexpr auto kChannelsLast = torch::MemoryFormat::ChannelsLast3d;

// Output and input gradient of one forward + backward.
struct Results {
  torch::Tensor output;
  torch::Tensor grad_input;
};

enum class Implementation { ours, libtorch };

Results run(Implementation implementation, const torch::Tensor& input, const torch::Tensor& grad_output) {
  // clone() keeps the memory format of a dense input.
  const torch::Tensor x = input.detach().clone().requires_grad_(true);
  const torch::Tensor y = implementation == Implementation::ours ? max_pool3d_2x2x2(x) : torch::max_pool3d(x, 2, 2);
  const auto grads = torch::autograd::grad({y}, {x}, {grad_output});
  return {y.detach(), grads[0]};
}

// True when both tensors have the same sizes and the same bits element by
// element, whatever their layouts.
bool same_bits(const torch::Tensor& actual, const torch::Tensor& expected) {
  if (actual.sizes() != expected.sizes() || actual.scalar_type() != expected.scalar_type()) {
    return false;
  }
  const auto integer_type = actual.element_size() == 8 ? torch::kInt64 : torch::kInt32;
  return torch::equal(actual.contiguous().view(integer_type), expected.contiguous().view(integer_type));
}

std::string shape_label(c10::IntArrayRef shape) {
  return fmt::format("shape [{}]", fmt::join(shape, ", "));
}

class MaxPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(2);
    torch::manual_seed(2024);
  }
};

// Runs ours and LibTorch on a ChannelsLast3d copy of `values` and checks
// that outputs and input gradients are bitwise equal and ChannelsLast3d.
void expect_matches_libtorch(const torch::Tensor& values, const std::string& label) {
  const torch::Tensor input = values.contiguous(kChannelsLast);
  ASSERT_TRUE(input.is_contiguous(kChannelsLast)) << label;
  const std::vector<std::int64_t> output_shape = {input.size(0), input.size(1), input.size(2) / 2,
                                                  input.size(3) / 2, input.size(4) / 2};
  // A plain contiguous grad_output, so backward also converts its layout.
  const torch::Tensor grad_output = torch::randn(output_shape);

  const Results ours = run(Implementation::ours, input, grad_output);
  const Results libtorch = run(Implementation::libtorch, input, grad_output);

  EXPECT_EQ(ours.output.sizes(), c10::IntArrayRef(output_shape)) << label;
  EXPECT_TRUE(ours.output.is_contiguous(kChannelsLast)) << label;
  EXPECT_TRUE(same_bits(ours.output, libtorch.output)) << label;
  EXPECT_TRUE(ours.grad_input.is_contiguous(kChannelsLast)) << label;
  EXPECT_EQ(ours.grad_input.sizes(), input.sizes()) << label;
  EXPECT_TRUE(same_bits(ours.grad_input, libtorch.grad_input)) << label;
}

const std::vector<std::vector<std::int64_t>> kOddShapes = {
    {2, 3, 5, 6, 7},  {2, 1, 5, 6, 7},   {2, 17, 5, 6, 7}, {2, 64, 5, 6, 7}, {1, 64, 8, 8, 8},
    {2, 17, 7, 3, 2}, {1, 35, 2, 9, 4},  {1, 3, 2, 2, 2},  {2, 128, 4, 3, 5}};

TEST_F(MaxPoolTest, MatchesLibtorchOnOddShapes) {
  for (const auto& shape : kOddShapes) {
    expect_matches_libtorch(torch::randn(shape), shape_label(shape));
  }
}

TEST_F(MaxPoolTest, MatchesLibtorchWithManyTies) {
  // Values from {0, 1, 2}, so most windows hold several equal maxima.
  for (const auto& shape : kOddShapes) {
    expect_matches_libtorch(torch::randint(0, 3, shape).to(torch::kFloat32), shape_label(shape) + " with ties");
  }
}

TEST_F(MaxPoolTest, MatchesLibtorchWithNaNAndInfinities) {
  // About a tenth of the values NaN, a tenth +inf and a tenth -inf, so some
  // windows hold several NaNs, or NaN next to +inf.
  for (const auto& shape : kOddShapes) {
    torch::Tensor values = torch::randn(shape);
    const torch::Tensor kind = torch::randint(0, 10, shape);
    values.masked_fill_(kind == 0, std::numeric_limits<float>::quiet_NaN());
    values.masked_fill_(kind == 1, std::numeric_limits<float>::infinity());
    values.masked_fill_(kind == 2, -std::numeric_limits<float>::infinity());
    expect_matches_libtorch(values, shape_label(shape) + " with NaN and infinities");
  }
}

// Window element k = 4 * dd + 2 * dh + dw of a [1, C, 2, 2, 2] input.
void set_window(torch::Tensor& input, std::int64_t channel, int k, float value) {
  input.index_put_({0, channel, k / 4, (k / 2) % 2, k % 2}, value);
}

// Checks a [1, C, 2, 2, 2] case against the expected output values and
// selected positions, and against LibTorch.
void expect_selection(const torch::Tensor& values, const std::vector<float>& expected_output,
                      const std::vector<int>& expected_position, const std::string& label) {
  const std::int64_t channels = values.size(1);
  const torch::Tensor input = values.contiguous(kChannelsLast);
  const torch::Tensor grad_output = torch::arange(1, channels + 1, torch::kFloat32).view({1, channels, 1, 1, 1});
  const Results ours = run(Implementation::ours, input, grad_output);
  const Results libtorch = run(Implementation::libtorch, input, grad_output);

  for (std::int64_t c = 0; c < channels; ++c) {
    const float output = ours.output[0][c][0][0][0].item<float>();
    const float expected = expected_output[c];
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(output)) << label << " channel " << c;
    } else {
      EXPECT_EQ(output, expected) << label << " channel " << c;
      EXPECT_EQ(std::signbit(output), std::signbit(expected)) << label << " channel " << c;
    }
    for (int k = 0; k < 8; ++k) {
      const float gradient = ours.grad_input[0][c][k / 4][(k / 2) % 2][k % 2].item<float>();
      const float expected_gradient = k == expected_position[c] ? static_cast<float>(c + 1) : 0.0f;
      EXPECT_EQ(gradient, expected_gradient) << label << " channel " << c << " window element " << k;
    }
  }
  EXPECT_TRUE(same_bits(ours.output, libtorch.output)) << label;
  EXPECT_TRUE(same_bits(ours.grad_input, libtorch.grad_input)) << label;
}

TEST_F(MaxPoolTest, TiesSelectFirstInScanOrder) {
  // Channel i < 28 has 2 at window elements a < b (the i-th pair) and 1
  // elsewhere, so a must win. Channels 28..34 cover the rest: all equal,
  // +0 before -0, -0 before +0, all -inf, three equal maxima and single
  // maxima. 35 is no multiple of a vector width, so both the vectorised loop
  // and its scalar epilogue run.
  constexpr std::int64_t kChannels = 35;
  torch::Tensor values = torch::ones({1, kChannels, 2, 2, 2});
  std::vector<float> expected_output(kChannels, 2.0f);
  std::vector<int> expected_position(kChannels, 0);
  std::int64_t channel = 0;
  for (int a = 0; a < 8; ++a) {
    for (int b = a + 1; b < 8; ++b) {
      set_window(values, channel, a, 2.0f);
      set_window(values, channel, b, 2.0f);
      expected_position[channel] = a;
      ++channel;
    }
  }

  // 28: all elements equal.
  expected_output[28] = 1.0f;
  // 29: -1 everywhere, +0 at 2 and -0 at 5; +0 wins because -0 > +0 is false.
  values[0][29].fill_(-1.0f);
  set_window(values, 29, 2, 0.0f);
  set_window(values, 29, 5, -0.0f);
  expected_output[29] = 0.0f;
  expected_position[29] = 2;
  // 30: -0 at 1 and +0 at 6; -0 wins for the same reason.
  values[0][30].fill_(-1.0f);
  set_window(values, 30, 1, -0.0f);
  set_window(values, 30, 6, 0.0f);
  expected_output[30] = -0.0f;
  expected_position[30] = 1;
  // 31: all -inf, so nothing beats LibTorch's starting value and element 0 wins.
  values[0][31].fill_(-std::numeric_limits<float>::infinity());
  expected_output[31] = -std::numeric_limits<float>::infinity();
  // 32: three equal maxima at 3, 4, 7.
  for (const int k : {3, 4, 7}) {
    set_window(values, 32, k, 5.0f);
  }
  expected_output[32] = 5.0f;
  expected_position[32] = 3;
  // 33: a single maximum in the last element.
  set_window(values, 33, 7, 3.0f);
  expected_output[33] = 3.0f;
  expected_position[33] = 7;
  // 34: a single maximum in the first element.
  set_window(values, 34, 0, 3.0f);
  expected_output[34] = 3.0f;

  expect_selection(values, expected_output, expected_position, "ties");
}

TEST_F(MaxPoolTest, NaNSelectionFollowsLibtorch) {
  // LibTorch takes an element when `value > maximum || isnan(value)`, so a
  // NaN beats every number, +inf included, and of several NaNs the last wins.
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  constexpr float kInfinity = std::numeric_limits<float>::infinity();
  constexpr std::int64_t kChannels = 21;
  torch::Tensor values = torch::zeros({1, kChannels, 2, 2, 2});
  std::vector<float> expected_output(kChannels, kNaN);
  std::vector<int> expected_position(kChannels, 0);

  // 0..7: one NaN at element c, +inf at element (c + 3) % 8.
  for (int c = 0; c < 8; ++c) {
    set_window(values, c, c, kNaN);
    set_window(values, c, (c + 3) % 8, kInfinity);
    expected_position[c] = c;
  }
  // 8..14: NaN at elements 0 and c - 7, so the later one (c - 7) wins.
  for (int c = 8; c < 15; ++c) {
    set_window(values, c, 0, kNaN);
    set_window(values, c, c - 7, kNaN);
    expected_position[c] = c - 7;
  }
  // 15: all NaN, the last element wins.
  values[0][15].fill_(kNaN);
  expected_position[15] = 7;
  // 16: NaN at 2, 4 and 5 with 9 at 6: element 5 wins.
  for (const int k : {2, 4, 5}) {
    set_window(values, 16, k, kNaN);
  }
  set_window(values, 16, 6, 9.0f);
  expected_position[16] = 5;
  // 17..20: no NaN, a plain maximum at element 2 * (c - 17) + 1.
  for (int c = 17; c < 21; ++c) {
    set_window(values, c, 2 * (c - 17) + 1, 4.0f);
    expected_output[c] = 4.0f;
    expected_position[c] = 2 * (c - 17) + 1;
  }

  expect_selection(values, expected_output, expected_position, "NaN");
}

TEST_F(MaxPoolTest, SumGradientMarksOneElementPerWindow) {
  // y.sum() sends an expanded gradient of ones, which backward must copy to
  // ChannelsLast3d. Then dx contains one 1 per window and zeros elsewhere,
  // including the plane, row and column that the odd sizes drop.
  const torch::Tensor x = torch::randn({2, 17, 5, 6, 7}).contiguous(kChannelsLast).requires_grad_(true);
  max_pool3d_2x2x2(x).sum().backward();
  const torch::Tensor dx = x.grad();
  ASSERT_TRUE(dx.is_contiguous(kChannelsLast));

  using torch::indexing::Slice;
  const torch::Tensor pooled = dx.index({Slice(), Slice(), Slice(0, 4), Slice(0, 6), Slice(0, 6)});
  const torch::Tensor per_window = torch::avg_pool3d(pooled, 2, 2) * 8.0;
  EXPECT_TRUE(torch::equal(per_window, torch::ones_like(per_window)));
  EXPECT_EQ(dx.sum().item<double>(), 2.0 * 17 * 2 * 3 * 3);
  EXPECT_EQ(dx.index({Slice(), Slice(), 4}).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(dx.index({Slice(), Slice(), Slice(), Slice(), 6}).abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal((dx == 0) | (dx == 1), torch::ones_like(dx, torch::kBool)));
}

TEST_F(MaxPoolTest, ThreadCountDoesNotChangeBits) {
  for (const std::vector<std::int64_t>& shape :
       std::vector<std::vector<std::int64_t>>{{1, 64, 16, 16, 16}, {2, 17, 5, 6, 7}, {1, 3, 32, 9, 33}}) {
    const torch::Tensor input = torch::randn(shape).contiguous(kChannelsLast);
    const torch::Tensor grad_output = torch::randn({shape[0], shape[1], shape[2] / 2, shape[3] / 2, shape[4] / 2});

    torch::set_num_threads(1);
    const Results one_thread = run(Implementation::ours, input, grad_output);
    for (const int threads : {2, 3}) {
      torch::set_num_threads(threads);
      const Results results = run(Implementation::ours, input, grad_output);
      const std::string label = fmt::format("{} with {} threads", shape_label(shape), threads);
      EXPECT_TRUE(same_bits(results.output, one_thread.output)) << label;
      EXPECT_TRUE(same_bits(results.grad_input, one_thread.grad_input)) << label;
    }
  }
}

TEST_F(MaxPoolTest, WithoutGradientMatchesLibtorch) {
  // Inference skips the index; the values must not change.
  const torch::Tensor input = torch::randn({2, 17, 5, 6, 7}).contiguous(kChannelsLast);
  const torch::Tensor expected = torch::max_pool3d(input, 2, 2);
  const torch::Tensor plain = max_pool3d_2x2x2(input);
  EXPECT_FALSE(plain.requires_grad());
  EXPECT_TRUE(plain.is_contiguous(kChannelsLast));
  EXPECT_TRUE(same_bits(plain, expected));

  torch::NoGradGuard no_grad;
  const torch::Tensor guarded = max_pool3d_2x2x2(input.clone().requires_grad_(true));
  EXPECT_FALSE(guarded.requires_grad());
  EXPECT_TRUE(same_bits(guarded, expected));
}

TEST_F(MaxPoolTest, ContiguousInputFallsBackToLibtorch) {
  const torch::Tensor input = torch::randn({2, 3, 5, 6, 7});
  const torch::Tensor grad_output = torch::randn({2, 3, 2, 3, 3});
  const Results ours = run(Implementation::ours, input, grad_output);
  const Results libtorch = run(Implementation::libtorch, input, grad_output);
  EXPECT_TRUE(ours.output.is_contiguous());
  EXPECT_FALSE(ours.output.is_contiguous(kChannelsLast));
  EXPECT_TRUE(same_bits(ours.output, libtorch.output));
  EXPECT_TRUE(same_bits(ours.grad_input, libtorch.grad_input));
}

TEST_F(MaxPoolTest, Float64FallsBackToLibtorch) {
  const torch::Tensor input = torch::randn({2, 17, 5, 6, 7}, torch::kFloat64).contiguous(kChannelsLast);
  const torch::Tensor grad_output = torch::randn({2, 17, 2, 3, 3}, torch::kFloat64);
  const Results ours = run(Implementation::ours, input, grad_output);
  const Results libtorch = run(Implementation::libtorch, input, grad_output);
  EXPECT_EQ(ours.output.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(same_bits(ours.output, libtorch.output));
  EXPECT_TRUE(same_bits(ours.grad_input, libtorch.grad_input));
}

TEST_F(MaxPoolTest, StridedViewFallsBackToLibtorch) {
  // Every other channel of a ChannelsLast3d tensor is not contiguous in any
  // layout, so LibTorch handles it.
  const torch::Tensor base = torch::randn({2, 34, 5, 6, 7}).contiguous(kChannelsLast);
  const torch::Tensor view = base.index({torch::indexing::Slice(), torch::indexing::Slice(0, 34, 2)});
  ASSERT_FALSE(view.is_contiguous(kChannelsLast));
  EXPECT_TRUE(same_bits(max_pool3d_2x2x2(view), torch::max_pool3d(view, 2, 2)));
}

TEST_F(MaxPoolTest, RejectsBadShapes) {
  const auto expect_message = [](const torch::Tensor& input, const std::string& fragment) {
    try {
      max_pool3d_2x2x2(input);
      ADD_FAILURE() << "no exception for " << shape_label(input.sizes());
    } catch (const std::invalid_argument& error) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
    }
  };
  expect_message(torch::zeros({2, 3, 4, 4}), "got shape [2, 3, 4, 4]");
  expect_message(torch::zeros({1, 2, 3, 4, 4, 4}), "got shape [1, 2, 3, 4, 4, 4]");
  expect_message(torch::zeros({2, 3, 1, 4, 4}).contiguous(kChannelsLast), "input shape [2, 3, 1, 4, 4]");
  expect_message(torch::zeros({2, 3, 4, 4, 1}), "input shape [2, 3, 4, 4, 1]");
  expect_message(torch::Tensor(), "defined");
}

TEST_F(MaxPoolTest, DoubleBackwardThrows) {
  const torch::Tensor x = torch::randn({1, 4, 4, 4, 4}).contiguous(kChannelsLast).requires_grad_(true);
  const torch::Tensor y = max_pool3d_2x2x2(x);
  EXPECT_THROW(torch::autograd::grad({y}, {x}, {torch::ones_like(y)}, /*retain_graph=*/true, /*create_graph=*/true),
               std::runtime_error);
}

TEST_F(MaxPoolTest, ModuleHasNoParametersAndPools) {
  torch::nn::Sequential sequential{scaffold::MaxPool3d2x2x2(), torch::nn::ReLU()};
  EXPECT_TRUE(sequential->parameters().empty());
  EXPECT_TRUE(sequential->named_buffers().is_empty());

  std::ostringstream printed;
  printed << *sequential[0];
  EXPECT_EQ(printed.str(), "scaffold::MaxPool3d2x2x2(kernel_size=2, stride=2)");

  const torch::Tensor input = torch::randn({2, 17, 5, 6, 7}).contiguous(kChannelsLast);
  const torch::Tensor output = sequential->forward(input);
  EXPECT_TRUE(output.is_contiguous(kChannelsLast));
  EXPECT_TRUE(same_bits(output, torch::relu(torch::max_pool3d(input, 2, 2))));
}

}  // namespace
