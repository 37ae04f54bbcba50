// Tests of the oneDNN convolutions: forward outputs and the gradients of
// input, weight and bias against LibTorch's torch::conv3d and
// torch::conv_transpose3d evaluated in float64, in contiguous and
// channels-last layouts, the split convolution of a concatenation, the
// primitive cache, input checks, and the module wrappers' parameters against
// torch::nn::Conv3d and torch::nn::ConvTranspose3d.
//
// Tolerance: every comparison divides the maximum absolute difference by the
// maximum absolute value of the float64 reference. The float32 oneDNN kernels
// sum at most a few thousand products per output here, and the largest error
// measured on these cases was 9e-7. kRelativeTolerance = 1e-5 leaves headroom
// for another summation order, while a wrong index gives an error of order 1.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "nn/onednn_conv.hpp"

namespace {

constexpr double kRelativeTolerance = 1e-5;

using scaffold::onednn_conv3d;
using scaffold::onednn_conv_transpose3d;

class OnednnConvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(2);
    torch::manual_seed(1234);
  }
};

// Maximum absolute difference relative to the reference's largest magnitude.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const torch::Tensor expected64 = expected.to(torch::kFloat64);
  const double scale = expected64.abs().max().item<double>();
  const double difference = (actual.to(torch::kFloat64) - expected64).abs().max().item<double>();
  return scale > 0.0 ? difference / scale : difference;
}

struct ConvCase {
  std::int64_t batch;
  std::int64_t in_channels;
  std::int64_t out_channels;
  std::vector<std::int64_t> spatial;  // [D, H, W]
  std::int64_t kernel;
  std::int64_t padding;
  bool bias;
};

std::string describe(const ConvCase& c) {
  return "N=" + std::to_string(c.batch) + " " + std::to_string(c.in_channels) + "->" +
         std::to_string(c.out_channels) + " spatial " + std::to_string(c.spatial[0]) + "x" +
         std::to_string(c.spatial[1]) + "x" + std::to_string(c.spatial[2]) + " k" + std::to_string(c.kernel) +
         " p" + std::to_string(c.padding) + (c.bias ? " bias" : " no bias");
}

// Leaf tensors for one case: float32 copies for oneDNN and float64 copies
// for the LibTorch reference, all with requires_grad.
struct Operands {
  torch::Tensor input, weight, bias;
  torch::Tensor input64, weight64, bias64;
  torch::Tensor grad_output;  // float32 weights of the scalar loss sum(output * grad_output)
};

// The float32 input is in `format`; the float64 copies are contiguous.
Operands make_operands(const std::vector<std::int64_t>& input_shape, const std::vector<std::int64_t>& weight_shape,
                       std::int64_t out_channels, bool with_bias,
                       torch::MemoryFormat format = torch::MemoryFormat::Contiguous) {
  Operands operands;
  const torch::Tensor input = torch::randn(input_shape).contiguous(format);
  const torch::Tensor weight = torch::randn(weight_shape) * 0.2;
  operands.input = input.clone().requires_grad_(true);
  operands.weight = weight.clone().requires_grad_(true);
  operands.input64 = input.to(torch::kFloat64).requires_grad_(true);
  operands.weight64 = weight.to(torch::kFloat64).requires_grad_(true);
  if (with_bias) {
    const torch::Tensor bias = torch::randn({out_channels});
    operands.bias = bias.clone().requires_grad_(true);
    operands.bias64 = bias.to(torch::kFloat64).requires_grad_(true);
  }
  return operands;
}

c10::optional<torch::Tensor> optional_bias(const torch::Tensor& bias) {
  return bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt;
}

const std::vector<torch::MemoryFormat> kLayouts = {torch::MemoryFormat::Contiguous,
                                                   torch::MemoryFormat::ChannelsLast3d};

std::string layout_name(torch::MemoryFormat format) {
  return format == torch::MemoryFormat::ChannelsLast3d ? "channels-last" : "contiguous";
}

// Expects the layout rule of the header: a ChannelsLast3d input gives a
// ChannelsLast3d output and input gradient. Tensors whose channel count or
// spatial size makes both layouts the same memory are not checked.
void expect_layout_kept(const torch::Tensor& input, const torch::Tensor& output, const std::string& label) {
  if (input.is_contiguous() || !input.is_contiguous(torch::MemoryFormat::ChannelsLast3d)) {
    return;
  }
  EXPECT_TRUE(output.is_contiguous(torch::MemoryFormat::ChannelsLast3d)) << label << ": output layout";
  ASSERT_TRUE(input.grad().defined()) << label;
  EXPECT_TRUE(input.grad().is_contiguous(torch::MemoryFormat::ChannelsLast3d)) << label << ": gradient layout";
}

// Backpropagates sum(output * grad_output) through both outputs and compares
// the output and every gradient.
void expect_matches_reference(Operands& operands, const torch::Tensor& output, const torch::Tensor& reference,
                              const std::string& label) {
  ASSERT_EQ(output.sizes(), reference.sizes()) << label;
  EXPECT_EQ(output.scalar_type(), torch::kFloat32) << label;
  EXPECT_LT(relative_error(output, reference), kRelativeTolerance) << label << ": forward output";

  const torch::Tensor grad_output = torch::randn(output.sizes());
  (output * grad_output).sum().backward();
  (reference * grad_output.to(torch::kFloat64)).sum().backward();

  ASSERT_TRUE(operands.input.grad().defined()) << label;
  ASSERT_TRUE(operands.weight.grad().defined()) << label;
  EXPECT_LT(relative_error(operands.input.grad(), operands.input64.grad()), kRelativeTolerance)
      << label << ": input gradient";
  EXPECT_LT(relative_error(operands.weight.grad(), operands.weight64.grad()), kRelativeTolerance)
      << label << ": weight gradient";
  if (operands.bias.defined()) {
    ASSERT_TRUE(operands.bias.grad().defined()) << label;
    EXPECT_LT(relative_error(operands.bias.grad(), operands.bias64.grad()), kRelativeTolerance)
        << label << ": bias gradient";
  }
}

TEST_F(OnednnConvTest, Conv3dMatchesLibTorchOnOddShapes) {
  const std::vector<ConvCase> cases = {
      {2, 3, 5, {6, 10, 8}, 3, 1, false},
      {2, 3, 5, {6, 10, 8}, 3, 1, true},
      {2, 7, 6, {6, 10, 8}, 3, 1, false},
      // Padding above k - 1: the channels-last input gradient cannot run as
      // a forward convolution and takes oneDNN's backward-data kernel.
      {2, 5, 4, {3, 4, 5}, 1, 1, true},
      {2, 13, 7, {6, 10, 8}, 3, 1, false},
      {2, 13, 7, {6, 10, 8}, 1, 0, true},
      {1, 13, 7, {5, 3, 7}, 3, 1, true},
      {2, 5, 4, {7, 5, 6}, 3, 0, true},
      {1, 16, 24, {4, 6, 8}, 3, 1, false},
  };
  for (const torch::MemoryFormat format : kLayouts) {
    for (const ConvCase& c : cases) {
      Operands operands = make_operands({c.batch, c.in_channels, c.spatial[0], c.spatial[1], c.spatial[2]},
                                        {c.out_channels, c.in_channels, c.kernel, c.kernel, c.kernel},
                                        c.out_channels, c.bias, format);

      const torch::Tensor output =
          onednn_conv3d(operands.input, operands.weight, optional_bias(operands.bias), c.padding);
      const torch::Tensor reference =
          torch::conv3d(operands.input64, operands.weight64, operands.bias64, 1, c.padding);

      const std::string label = layout_name(format) + " " + describe(c);
      expect_matches_reference(operands, output, reference, label);
      expect_layout_kept(operands.input, output, label);
    }
  }
}

TEST_F(OnednnConvTest, ConvTranspose3dMatchesLibTorchOnOddShapes) {
  // Spatial sizes here are the input's, and outputs are twice as large,
  // e.g. 3x5x4 -> 6x10x8.
  const std::vector<ConvCase> cases = {
      {2, 13, 7, {3, 5, 4}, 2, 0, true},
      {2, 3, 5, {3, 5, 4}, 2, 0, false},
      {1, 16, 8, {2, 3, 5}, 2, 0, true},
      {1, 5, 13, {1, 1, 1}, 2, 0, true},
  };
  for (const torch::MemoryFormat format : kLayouts) {
    for (const ConvCase& c : cases) {
      Operands operands =
          make_operands({c.batch, c.in_channels, c.spatial[0], c.spatial[1], c.spatial[2]},
                        {c.in_channels, c.out_channels, 2, 2, 2}, c.out_channels, c.bias, format);

      const torch::Tensor output =
          onednn_conv_transpose3d(operands.input, operands.weight, optional_bias(operands.bias));
      const torch::Tensor reference =
          torch::conv_transpose3d(operands.input64, operands.weight64, operands.bias64, 2);

      const std::string label = layout_name(format) + " transposed " + describe(c);
      expect_matches_reference(operands, output, reference, label);
      expect_layout_kept(operands.input, output, label);
    }
  }
}

TEST_F(OnednnConvTest, ConcatenatedConvMatchesLibTorch) {
  // onednn_conv3d_cat(first, second) against torch::conv3d of the
  // concatenation, in both layouts: channels-last runs the split
  // convolutions, contiguous inputs the concatenation.
  struct CatCase {
    std::int64_t batch, first_channels, second_channels, out_channels;
    std::vector<std::int64_t> spatial;
    std::int64_t kernel, padding;
    bool bias;
  };
  const std::vector<CatCase> cases = {
      {2, 5, 7, 6, {6, 10, 8}, 3, 1, false},
      {1, 16, 16, 8, {4, 6, 8}, 3, 1, true},
      {2, 3, 13, 5, {5, 3, 7}, 1, 0, true},
  };
  for (const torch::MemoryFormat format : kLayouts) {
    for (const CatCase& c : cases) {
      const std::string label = layout_name(format) + " N=" + std::to_string(c.batch) + " " +
                                std::to_string(c.first_channels) + "+" + std::to_string(c.second_channels) +
                                "->" + std::to_string(c.out_channels) + " k" + std::to_string(c.kernel);
      const std::int64_t in_channels = c.first_channels + c.second_channels;
      const std::vector<std::int64_t> spatial = c.spatial;
      const torch::Tensor first_values =
          torch::randn({c.batch, c.first_channels, spatial[0], spatial[1], spatial[2]});
      const torch::Tensor second_values =
          torch::randn({c.batch, c.second_channels, spatial[0], spatial[1], spatial[2]});
      const torch::Tensor weight_values =
          torch::randn({c.out_channels, in_channels, c.kernel, c.kernel, c.kernel}) * 0.2;
      const torch::Tensor bias_values = torch::randn({c.out_channels});

      const torch::Tensor first = first_values.clone(format).requires_grad_(true);
      const torch::Tensor second = second_values.clone(format).requires_grad_(true);
      const torch::Tensor weight = weight_values.clone().requires_grad_(true);
      const torch::Tensor bias = bias_values.clone().requires_grad_(true);
      const torch::Tensor first64 = first_values.to(torch::kFloat64).requires_grad_(true);
      const torch::Tensor second64 = second_values.to(torch::kFloat64).requires_grad_(true);
      const torch::Tensor weight64 = weight_values.to(torch::kFloat64).requires_grad_(true);
      const torch::Tensor bias64 = bias_values.to(torch::kFloat64).requires_grad_(true);

      const torch::Tensor output = scaffold::onednn_conv3d_cat(first, second, weight,
                                                               c.bias ? optional_bias(bias) : c10::nullopt, c.padding);
      const torch::Tensor reference = torch::conv3d(torch::cat({first64, second64}, 1), weight64,
                                                    c.bias ? bias64 : torch::Tensor(), 1, c.padding);
      ASSERT_EQ(output.sizes(), reference.sizes()) << label;
      EXPECT_LT(relative_error(output, reference), kRelativeTolerance) << label << ": forward output";

      const torch::Tensor grad_output = torch::randn(output.sizes());
      (output * grad_output).sum().backward();
      (reference * grad_output.to(torch::kFloat64)).sum().backward();
      EXPECT_LT(relative_error(first.grad(), first64.grad()), kRelativeTolerance) << label << ": first gradient";
      EXPECT_LT(relative_error(second.grad(), second64.grad()), kRelativeTolerance) << label << ": second gradient";
      EXPECT_LT(relative_error(weight.grad(), weight64.grad()), kRelativeTolerance) << label << ": weight gradient";
      if (c.bias) {
        EXPECT_LT(relative_error(bias.grad(), bias64.grad()), kRelativeTolerance) << label << ": bias gradient";
      } else {
        EXPECT_FALSE(bias.grad().defined()) << label;
      }
      expect_layout_kept(first, output, label);
      expect_layout_kept(second, output, label);
    }
  }
}

TEST_F(OnednnConvTest, ConcatenatedConvRejectsMismatchedInputs) {
  const auto channels_last = torch::MemoryFormat::ChannelsLast3d;
  const torch::Tensor first = torch::randn({1, 4, 6, 6, 6}).contiguous(channels_last);
  const torch::Tensor weight = torch::randn({5, 7, 3, 3, 3});
  // A different spatial size in the second input.
  EXPECT_THROW(scaffold::onednn_conv3d_cat(first, torch::randn({1, 3, 6, 6, 5}).contiguous(channels_last), weight,
                                           c10::nullopt, 1),
               std::invalid_argument);
  // 4 + 4 channels against a weight for 7: the message names both inputs.
  try {
    scaffold::onednn_conv3d_cat(first, torch::randn({1, 4, 6, 6, 6}).contiguous(channels_last), weight,
                                c10::nullopt, 1);
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("input has 8 channels (shape [1, 4, 6, 6, 6] concatenated with "
                                             "[1, 4, 6, 6, 6]) but weight expects 7"),
              std::string::npos)
        << error.what();
  }
}

TEST_F(OnednnConvTest, GradientsOnlyWhereRequested) {
  // The first U-Net convolution receives data without requires_grad, so
  // only the weight gradient is computed.
  const torch::Tensor input = torch::randn({1, 3, 4, 6, 5});
  const torch::Tensor weight = (torch::randn({5, 3, 3, 3, 3}) * 0.2).requires_grad_(true);
  const torch::Tensor weight64 = weight.detach().to(torch::kFloat64).requires_grad_(true);

  onednn_conv3d(input, weight, c10::nullopt, 1).sum().backward();
  torch::conv3d(input.to(torch::kFloat64), weight64, {}, 1, 1).sum().backward();

  EXPECT_FALSE(input.grad().defined());
  ASSERT_TRUE(weight.grad().defined());
  EXPECT_LT(relative_error(weight.grad(), weight64.grad()), kRelativeTolerance);
}

TEST_F(OnednnConvTest, OneChannelInputTurnsChannelsLast) {
  // A plain one-channel input is also contiguous in ChannelsLast3d, so it
  // takes the channels-last path and the output (7 channels) is
  // ChannelsLast3d: a U-Net on one-channel volumes stays channels-last.
  Operands operands = make_operands({2, 1, 5, 4, 3}, {7, 1, 3, 3, 3}, 7, true);
  ASSERT_TRUE(operands.input.is_contiguous());
  const torch::Tensor output = onednn_conv3d(operands.input, operands.weight, operands.bias, 1);
  EXPECT_TRUE(output.is_contiguous(torch::MemoryFormat::ChannelsLast3d));
  EXPECT_FALSE(output.is_contiguous());
  const torch::Tensor reference = torch::conv3d(operands.input64, operands.weight64, operands.bias64, 1, 1);
  expect_matches_reference(operands, output, reference, "one channel");
}

TEST_F(OnednnConvTest, NonContiguousInputMatchesContiguous) {
  // An input in neither layout (a transposed view) and a permuted weight
  // carry the same values in other strides, which the function copies to
  // contiguous layout first, so the result is bitwise the contiguous one.
  const torch::Tensor input = torch::randn({2, 13, 6, 10, 8});
  const torch::Tensor weight = torch::randn({7, 13, 3, 3, 3});
  const torch::Tensor transposed_view = input.transpose(2, 4).contiguous().transpose(2, 4);
  const torch::Tensor strided_weight = weight.permute({1, 0, 2, 3, 4}).contiguous().permute({1, 0, 2, 3, 4});
  ASSERT_FALSE(transposed_view.is_contiguous());
  ASSERT_FALSE(transposed_view.is_contiguous(torch::MemoryFormat::ChannelsLast3d));
  ASSERT_FALSE(strided_weight.is_contiguous());

  const torch::Tensor expected = onednn_conv3d(input, weight, c10::nullopt, 1);
  const torch::Tensor actual = onednn_conv3d(transposed_view, strided_weight, c10::nullopt, 1);

  EXPECT_TRUE(actual.is_contiguous());
  EXPECT_TRUE(torch::equal(actual, expected));
}

TEST_F(OnednnConvTest, CachedPrimitivesRepeatResults) {
  const torch::Tensor input = torch::randn({2, 13, 6, 10, 8});
  const torch::Tensor weight = torch::randn({7, 13, 3, 3, 3});
  const torch::Tensor bias = torch::randn({7});
  const torch::Tensor deep = torch::randn({2, 13, 3, 5, 4});
  const torch::Tensor up_weight = torch::randn({13, 7, 2, 2, 2});

  const torch::Tensor first = onednn_conv3d(input, weight, bias, 1);
  const torch::Tensor first_up = onednn_conv_transpose3d(deep, up_weight, bias);
  const std::size_t entries = scaffold::onednn_conv_cache_size();
  const torch::Tensor second = onednn_conv3d(input, weight, bias, 1);
  const torch::Tensor second_up = onednn_conv_transpose3d(deep, up_weight, bias);

  // The second calls reuse the cached primitives and give bitwise equal results.
  EXPECT_EQ(scaffold::onednn_conv_cache_size(), entries);
  EXPECT_TRUE(torch::equal(first, second));
  EXPECT_TRUE(torch::equal(first_up, second_up));

  // Another padding is another primitive.
  onednn_conv3d(input, weight, bias, 0);
  EXPECT_EQ(scaffold::onednn_conv_cache_size(), entries + 1);
}

TEST_F(OnednnConvTest, ConcurrentCallsMatchSingleThreaded) {
  // Both threads create and then share the primitives of a shape not used
  // elsewhere in this file.
  const torch::Tensor input = torch::randn({1, 11, 5, 7, 9});
  const torch::Tensor weight = torch::randn({6, 11, 3, 3, 3});
  const torch::Tensor expected = torch::conv3d(input, weight, {}, 1, 1);

  std::vector<torch::Tensor> results(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = onednn_conv3d(input, weight, c10::nullopt, 1);
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }

  for (const auto& result : results) {
    ASSERT_TRUE(result.defined());
    EXPECT_LT(relative_error(result, expected), kRelativeTolerance);
    EXPECT_TRUE(torch::equal(result, results[0]));
  }
}

TEST_F(OnednnConvTest, RejectsFloat64Input) {
  const torch::Tensor input = torch::randn({1, 3, 4, 4, 4}, torch::kFloat64);
  const torch::Tensor weight = torch::randn({5, 3, 3, 3, 3}, torch::kFloat64);
  try {
    onednn_conv3d(input, weight, c10::nullopt, 1);
    FAIL() << "float64 input was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("float32"), std::string::npos) << error.what();
  }
  EXPECT_THROW(onednn_conv_transpose3d(input, torch::randn({3, 5, 2, 2, 2}, torch::kFloat64), c10::nullopt),
               std::invalid_argument);
}

TEST_F(OnednnConvTest, RejectsNonCpuInput) {
  // A meta-device tensor replaces a CUDA tensor, which this CPU-only build cannot create.
  const torch::Tensor input = torch::empty({1, 3, 4, 4, 4}, torch::Device(torch::kMeta));
  const torch::Tensor weight = torch::randn({5, 3, 3, 3, 3});
  try {
    onednn_conv3d(input, weight, c10::nullopt, 1);
    FAIL() << "meta-device input was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("CPU only"), std::string::npos) << error.what();
  }
}

TEST_F(OnednnConvTest, RejectsMismatchedShapes) {
  const torch::Tensor input = torch::randn({1, 3, 4, 4, 4});
  EXPECT_THROW(onednn_conv3d(input, torch::randn({5, 4, 3, 3, 3}), c10::nullopt, 1), std::invalid_argument);
  EXPECT_THROW(onednn_conv3d(input, torch::randn({5, 3, 3, 3, 1}), c10::nullopt, 1), std::invalid_argument);
  EXPECT_THROW(onednn_conv3d(input, torch::randn({5, 3, 3, 3, 3}), torch::randn({4}), 1),
               std::invalid_argument);
  EXPECT_THROW(onednn_conv3d(input, torch::randn({5, 3, 3, 3, 3}), c10::nullopt, -1), std::invalid_argument);
  EXPECT_THROW(onednn_conv3d(input.flatten(0, 1), torch::randn({5, 3, 3, 3, 3}), c10::nullopt, 1),
               std::invalid_argument);
  EXPECT_THROW(onednn_conv3d(torch::randn({1, 3, 2, 4, 4}), torch::randn({5, 3, 3, 3, 3}), c10::nullopt, 0),
               std::invalid_argument);
  EXPECT_THROW(onednn_conv_transpose3d(input, torch::randn({3, 5, 3, 3, 3}), c10::nullopt),
               std::invalid_argument);
  EXPECT_THROW(onednn_conv_transpose3d(input, torch::randn({4, 5, 2, 2, 2}), c10::nullopt),
               std::invalid_argument);
}

TEST_F(OnednnConvTest, DoubleBackwardThrows) {
  const torch::Tensor input = torch::randn({1, 3, 4, 4, 4}).requires_grad_(true);
  const torch::Tensor weight = torch::randn({5, 3, 3, 3, 3}).requires_grad_(true);
  const torch::Tensor loss = onednn_conv3d(input, weight, c10::nullopt, 1).square().sum();
  EXPECT_THROW(torch::autograd::grad({loss}, {input}, {}, true, /*create_graph=*/true), std::runtime_error);
}

TEST_F(OnednnConvTest, NoGradForwardHasNoGraph) {
  const torch::Tensor input = torch::randn({1, 3, 4, 4, 4});
  const torch::Tensor weight = torch::randn({5, 3, 3, 3, 3}).requires_grad_(true);
  torch::NoGradGuard no_grad;
  const torch::Tensor output = onednn_conv3d(input, weight, c10::nullopt, 1);
  EXPECT_FALSE(output.requires_grad());
}

std::vector<std::string> parameter_names(const torch::nn::Module& module) {
  std::vector<std::string> names;
  for (const auto& item : module.named_parameters()) {
    names.push_back(item.key());
  }
  return names;
}

TEST_F(OnednnConvTest, Conv3dModuleMatchesTorchModule) {
  for (const bool with_bias : {false, true}) {
    torch::manual_seed(42);
    torch::nn::Conv3d reference(torch::nn::Conv3dOptions(13, 7, 3).padding(1).bias(with_bias));
    torch::manual_seed(42);
    scaffold::OnednnConv3d module(13, 7, 3, 1, with_bias);

    // Same seed, same draws: parameters and their names are identical.
    EXPECT_EQ(parameter_names(*module), parameter_names(*reference));
    EXPECT_TRUE(torch::equal(module->weight, reference->weight));
    if (with_bias) {
      EXPECT_TRUE(torch::equal(module->bias, reference->bias));
    } else {
      EXPECT_FALSE(module->bias.defined());
    }

    const torch::Tensor x = torch::randn({2, 13, 6, 10, 8});
    EXPECT_LT(relative_error(module->forward(x), reference->forward(x)), kRelativeTolerance);
  }
}

TEST_F(OnednnConvTest, ConvTranspose3dModuleMatchesTorchModule) {
  torch::manual_seed(43);
  torch::nn::ConvTranspose3d reference(torch::nn::ConvTranspose3dOptions(13, 7, 2).stride(2).bias(true));
  torch::manual_seed(43);
  scaffold::OnednnConvTranspose3d module(13, 7, true);

  EXPECT_EQ(parameter_names(*module), parameter_names(*reference));
  EXPECT_TRUE(torch::equal(module->weight, reference->weight));
  EXPECT_TRUE(torch::equal(module->bias, reference->bias));

  const torch::Tensor x = torch::randn({2, 13, 3, 5, 4});
  EXPECT_LT(relative_error(module->forward(x), reference->forward(x)), kRelativeTolerance);
}

TEST_F(OnednnConvTest, ModuleLoadsTorchModuleParameters) {
  // Copying by name, as loading a state dict does, gives the oneDNN module
  // the torch::nn::Conv3d's function.
  torch::nn::Conv3d source(torch::nn::Conv3dOptions(3, 5, 1).bias(true));
  scaffold::OnednnConv3d target(3, 5, 1, 0, true);
  {
    torch::NoGradGuard no_grad;
    for (const auto& item : source->named_parameters()) {
      target->named_parameters()[item.key()].copy_(item.value());
    }
  }

  const torch::Tensor x = torch::randn({1, 3, 4, 6, 5});
  EXPECT_LT(relative_error(target->forward(x), source->forward(x)), kRelativeTolerance);
}

TEST_F(OnednnConvTest, BackendFactoriesAgree) {
  // Sequential and AnyModule dispatch to forward(Tensor), as in the U-Net.
  torch::manual_seed(44);
  torch::nn::Sequential libtorch_model;
  libtorch_model->push_back("conv", scaffold::make_conv3d(13, 7, 3, 1, false, scaffold::ConvBackend::libtorch));
  libtorch_model->push_back("up", scaffold::make_conv_transpose3d(7, 5, true, scaffold::ConvBackend::libtorch));
  torch::manual_seed(44);
  torch::nn::Sequential onednn_model;
  onednn_model->push_back("conv", scaffold::make_conv3d(13, 7, 3, 1, false, scaffold::ConvBackend::onednn));
  onednn_model->push_back("up", scaffold::make_conv_transpose3d(7, 5, true, scaffold::ConvBackend::onednn));

  const auto libtorch_parameters = libtorch_model->named_parameters();
  const auto onednn_parameters = onednn_model->named_parameters();
  ASSERT_EQ(parameter_names(*onednn_model), parameter_names(*libtorch_model));
  for (const auto& item : libtorch_parameters) {
    EXPECT_TRUE(torch::equal(onednn_parameters[item.key()], item.value())) << item.key();
  }

  const torch::Tensor x = torch::randn({1, 13, 4, 6, 2});
  EXPECT_LT(relative_error(onednn_model->forward(x), libtorch_model->forward(x)), kRelativeTolerance);
}

}  // namespace
