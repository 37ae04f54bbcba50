// Tests of the 3D U-Net: parameter counts from the architecture rules, shapes,
// input checks, GroupNorm statistics, and the forward pass against a
// functional re-implementation built from the model's named parameters.
#include <gtest/gtest.h>

#include <map>
#include <stdexcept>
#include <string>

#include "nn/unet.hpp"

namespace {

using scaffold::UNet;

// Parameter count of the reference U-Net computed from its layer rules:
// 3x3x3 convolutions without bias, GroupNorm affine 2*C, transposed convolution
// cin -> cin/2 with kernel 2^3 and bias, and a 1x1x1 output convolution with bias.
std::int64_t expected_parameter_count(std::int64_t in_channels, std::int64_t n_classes, int layers) {
  const auto double_conv = [](std::int64_t cin, std::int64_t cout) {
    return cin * cout * 27 + 2 * cout + cout * cout * 27 + 2 * cout;
  };
  std::int64_t total = double_conv(in_channels, 64);
  for (int i = 0; i < layers; ++i) {
    const std::int64_t width = std::int64_t{64} << i;
    total += double_conv(width, 2 * width);
  }
  for (int i = 0; i < layers; ++i) {
    const std::int64_t deep = std::int64_t{64} << (layers - i);
    total += deep * (deep / 2) * 8 + deep / 2;
    total += double_conv(deep, deep / 2);
  }
  total += 64 * n_classes + n_classes;
  return total;
}

std::map<std::string, torch::Tensor> parameters_by_name(UNet& net) {
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& item : net->named_parameters()) {
    by_name[item.key()] = item.value();
  }
  return by_name;
}

// Functional forward pass of the reference architecture, written from its
// description and independent of the module classes.
class FunctionalUNet {
 public:
  FunctionalUNet(std::map<std::string, torch::Tensor> params, int layers, int groups)
      : params_(std::move(params)), layers_(layers), groups_(groups) {}

  torch::Tensor forward(const torch::Tensor& x) {
    std::vector<torch::Tensor> encoder{double_conv(x, "inc.")};
    for (int i = 1; i <= layers_; ++i) {
      const torch::Tensor pooled = torch::max_pool3d(encoder.back(), {2, 2, 2}, {2, 2, 2});
      encoder.push_back(double_conv(pooled, "down" + std::to_string(i) + ".maxpool_conv.1."));
    }

    torch::Tensor h = encoder.back();
    for (int i = 1; i <= layers_; ++i) {
      const std::string prefix = "up" + std::to_string(i) + ".";
      const torch::Tensor upsampled =
          torch::conv_transpose3d(h, at(prefix + "up.weight"), at(prefix + "up.bias"), {2, 2, 2});
      const torch::Tensor& skip = encoder[layers_ - i];
      h = double_conv(torch::cat({skip, upsampled}, 1), prefix + "conv.");
    }
    return torch::conv3d(h, at("outc.conv.weight"), at("outc.conv.bias"));
  }

 private:
  const torch::Tensor& at(const std::string& name) const {
    const auto it = params_.find(name);
    if (it == params_.end()) {
      throw std::runtime_error("parameter not found: " + name);
    }
    return it->second;
  }

  torch::Tensor double_conv(const torch::Tensor& x, const std::string& prefix) {
    const std::string base = prefix + "double_conv.";
    torch::Tensor h = torch::conv3d(x, at(base + "0.weight"), {}, 1, 1);
    h = torch::relu(torch::group_norm(h, groups_, at(base + "1.weight"), at(base + "1.bias"), 1e-5));
    h = torch::conv3d(h, at(base + "3.weight"), {}, 1, 1);
    return torch::relu(torch::group_norm(h, groups_, at(base + "4.weight"), at(base + "4.bias"), 1e-5));
  }

  std::map<std::string, torch::Tensor> params_;
  int layers_;
  int groups_;
};

class UNetTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::set_num_threads(2); }
};

TEST_F(UNetTest, ParameterCountsMatchReference) {
  const std::map<int, std::int64_t> reference_counts = {
      {1, 1'178'118}, {2, 5'423'238}, {3, 22'400'390}, {4, 90'302'342}};
  for (const auto& [layers, count] : reference_counts) {
    UNet net(3, 6, layers, 8);
    EXPECT_EQ(scaffold::count_parameters(net), count) << "layers=" << layers;
    EXPECT_EQ(expected_parameter_count(3, 6, layers), count) << "layers=" << layers;
  }
}

TEST_F(UNetTest, ParameterCountFollowsLayerRules) {
  UNet three_classes(3, 3, 2, 4);
  EXPECT_EQ(scaffold::count_parameters(three_classes), expected_parameter_count(3, 3, 2));

  UNet one_input_channel(1, 11, 1, 8);
  EXPECT_EQ(scaffold::count_parameters(one_input_channel), expected_parameter_count(1, 11, 1));
}

TEST_F(UNetTest, ParameterNamesMatchReference) {
  UNet net(3, 6, 2, 8);
  const auto params = parameters_by_name(net);
  const std::map<std::string, std::vector<int64_t>> expected_shapes = {
      {"inc.double_conv.0.weight", {64, 3, 3, 3, 3}},
      {"inc.double_conv.1.weight", {64}},
      {"inc.double_conv.4.bias", {64}},
      {"down1.maxpool_conv.1.double_conv.0.weight", {128, 64, 3, 3, 3}},
      {"down2.maxpool_conv.1.double_conv.3.weight", {256, 256, 3, 3, 3}},
      {"up1.up.weight", {256, 128, 2, 2, 2}},
      {"up1.up.bias", {128}},
      {"up1.conv.double_conv.0.weight", {128, 256, 3, 3, 3}},
      {"up2.conv.double_conv.3.weight", {64, 64, 3, 3, 3}},
      {"outc.conv.weight", {6, 64, 1, 1, 1}},
      {"outc.conv.bias", {6}},
  };
  for (const auto& [name, shape] : expected_shapes) {
    const auto it = params.find(name);
    ASSERT_NE(it, params.end()) << "missing parameter " << name;
    EXPECT_EQ(it->second.sizes().vec(), shape) << name;
  }

  // Convolutions other than the transposed and output ones carry no bias.
  EXPECT_EQ(params.count("inc.double_conv.0.bias"), 0u);
  EXPECT_EQ(params.count("up1.conv.double_conv.3.bias"), 0u);
}

TEST_F(UNetTest, OutputShapeCubic) {
  torch::manual_seed(0);
  UNet net(3, 6, 2, 8);
  const torch::Tensor logits = net->forward(torch::randn({2, 3, 16, 16, 16}));
  EXPECT_EQ(logits.sizes().vec(), (std::vector<int64_t>{2, 6, 16, 16, 16}));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat);
}

TEST_F(UNetTest, OutputShapeNonCubic) {
  torch::manual_seed(0);
  UNet net(3, 4, 3, 8);
  const torch::Tensor logits = net->forward(torch::randn({1, 3, 16, 8, 32}));
  EXPECT_EQ(logits.sizes().vec(), (std::vector<int64_t>{1, 4, 16, 8, 32}));
}

TEST_F(UNetTest, RejectsInvalidConstruction) {
  EXPECT_THROW(UNet(3, 6, 0, 8), std::invalid_argument);
  EXPECT_THROW(UNet(3, 6, -1, 8), std::invalid_argument);
  EXPECT_THROW(UNet(0, 6, 1, 8), std::invalid_argument);
  EXPECT_THROW(UNet(3, 0, 1, 8), std::invalid_argument);
  EXPECT_THROW(UNet(3, 6, 1, 7), std::invalid_argument);
  EXPECT_THROW(UNet(3, 6, 1, 0), std::invalid_argument);
}

TEST_F(UNetTest, RejectsInvalidInput) {
  UNet net(3, 6, 3, 8);

  // 12 is not a multiple of 2^3, and 4 is smaller than 2^3.
  EXPECT_THROW(net->forward(torch::zeros({1, 3, 16, 12, 16})), std::invalid_argument);
  EXPECT_THROW(net->forward(torch::zeros({1, 3, 16, 16, 4})), std::invalid_argument);
  EXPECT_THROW(net->forward(torch::zeros({1, 2, 16, 16, 16})), std::invalid_argument);
  EXPECT_THROW(net->forward(torch::zeros({3, 16, 16, 16})), std::invalid_argument);

  try {
    net->forward(torch::zeros({1, 3, 16, 12, 16}));
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("multiples of 8"), std::string::npos) << error.what();
  }
}

TEST_F(UNetTest, GroupNormZeroMeanPerGroup) {
  torch::manual_seed(3);
  constexpr int kGroups = 4;
  scaffold::DoubleConv block(3, 16, kGroups);
  auto& layers = block->layers();
  const torch::Tensor x = torch::randn({2, 3, 6, 6, 6});

  // Run conv -> GroupNorm by hand to see the normalised values before ReLU.
  torch::NoGradGuard no_grad;
  const torch::Tensor conv_out = layers[0]->as<torch::nn::Conv3d>()->forward(x);
  const torch::Tensor normalised = layers[1]->as<torch::nn::GroupNorm>()->forward(conv_out);

  // grouped: [N, groups, channels_per_group * D * H * W]. The default affine
  // parameters (weight 1, bias 0) leave the normalised values unchanged.
  const torch::Tensor grouped = normalised.reshape({2, kGroups, -1});
  const torch::Tensor group_means = grouped.mean(2);
  const torch::Tensor group_vars = grouped.var(2, /*unbiased=*/false);
  EXPECT_LT(group_means.abs().max().item<double>(), 1e-5);
  EXPECT_LT((group_vars - 1).abs().max().item<double>(), 1e-3);

  // Per channel the mean is not zero in general, so the statistics really
  // are pooled over groups of 16 / 4 = 4 channels.
  EXPECT_GT(normalised.mean({2, 3, 4}).abs().max().item<double>(), 1e-3);
}

TEST_F(UNetTest, DoubleConvMatchesFunctional) {
  torch::manual_seed(4);
  constexpr int kGroups = 2;
  scaffold::DoubleConv block(3, 8, kGroups);

  // Non-trivial GroupNorm affine parameters, so a swapped weight/bias or a
  // missing affine step shows up.
  torch::NoGradGuard no_grad;
  for (auto& item : block->named_parameters()) {
    if (item.key().find(".1.") != std::string::npos || item.key().find(".4.") != std::string::npos) {
      item.value().uniform_(-1.0, 1.0);
    }
  }

  const torch::Tensor x = torch::randn({2, 3, 4, 6, 8});
  std::map<std::string, torch::Tensor> p;
  for (const auto& item : block->named_parameters()) {
    p[item.key()] = item.value();
  }
  torch::Tensor h = torch::conv3d(x, p.at("double_conv.0.weight"), {}, 1, 1);
  h = torch::relu(torch::group_norm(h, kGroups, p.at("double_conv.1.weight"), p.at("double_conv.1.bias"), 1e-5));
  h = torch::conv3d(h, p.at("double_conv.3.weight"), {}, 1, 1);
  h = torch::relu(torch::group_norm(h, kGroups, p.at("double_conv.4.weight"), p.at("double_conv.4.bias"), 1e-5));

  const torch::Tensor out = block->forward(x);
  ASSERT_EQ(out.sizes(), h.sizes());
  EXPECT_TRUE(torch::allclose(out, h, 1e-5, 1e-5)) << (out - h).abs().max().item<double>();
  EXPECT_GE(out.min().item<double>(), 0.0);
}

TEST_F(UNetTest, ForwardMatchesFunctional) {
  for (const int layers : {1, 2}) {
    torch::manual_seed(5);
    UNet net(3, 5, layers, 8);

    // Randomise GroupNorm affine parameters and biases away from their
    // defaults (1 and 0) so that each of them affects the output.
    torch::NoGradGuard no_grad;
    for (auto& item : net->named_parameters()) {
      if (item.value().dim() == 1) {
        item.value().uniform_(-0.5, 1.5);
      }
    }

    const torch::Tensor x = torch::randn({2, 3, 8, 4, 8});
    const torch::Tensor expected = FunctionalUNet(parameters_by_name(net), layers, 8).forward(x);
    const torch::Tensor out = net->forward(x);
    ASSERT_EQ(out.sizes(), expected.sizes()) << "layers=" << layers;
    EXPECT_TRUE(torch::allclose(out, expected, 1e-4, 1e-5))
        << "layers=" << layers << " max diff " << (out - expected).abs().max().item<double>();
  }
}

TEST_F(UNetTest, SeedDeterminesWeights) {
  torch::manual_seed(11);
  UNet first(3, 6, 1, 8);
  torch::manual_seed(11);
  UNet second(3, 6, 1, 8);
  torch::manual_seed(12);
  UNet third(3, 6, 1, 8);

  const auto a = first->parameters();
  const auto b = second->parameters();
  const auto c = third->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
  }
  EXPECT_FALSE(torch::equal(a[0], c[0]));
}

TEST_F(UNetTest, BackwardReachesEveryParameter) {
  torch::manual_seed(7);
  UNet net(3, 3, 2, 8);
  const torch::Tensor x = torch::randn({1, 3, 8, 8, 8});

  // A loss that depends on every output voxel and class in a non-symmetric
  // way, so that no parameter gets an exactly zero gradient by symmetry.
  const torch::Tensor logits = net->forward(x);
  const torch::Tensor loss = (logits * torch::randn_like(logits)).sum();
  loss.backward();

  for (const auto& item : net->named_parameters()) {
    const torch::Tensor& grad = item.value().grad();
    ASSERT_TRUE(grad.defined()) << item.key();
    EXPECT_TRUE(torch::isfinite(grad).all().item<bool>()) << item.key();
    EXPECT_GT(grad.abs().max().item<double>(), 0.0) << item.key();
  }
}

}  // namespace

namespace {

// Builds both backends from one seed and compares outputs and every parameter
// gradient on a non-cubic batch of 2.
void expect_backends_match(int in_channels) {
  torch::set_num_threads(2);

  // Same seed, so both networks start from equal parameters.
  torch::manual_seed(11);
  scaffold::UNet libtorch_net(in_channels, 4, 2, 8, scaffold::ConvBackend::libtorch);
  torch::manual_seed(11);
  scaffold::UNet onednn_net(in_channels, 4, 2, 8, scaffold::ConvBackend::onednn);
  const auto libtorch_params = libtorch_net->named_parameters();
  const auto onednn_params = onednn_net->named_parameters();
  ASSERT_EQ(libtorch_params.size(), onednn_params.size());
  for (const auto& item : libtorch_params) {
    ASSERT_NE(onednn_params.find(item.key()), nullptr) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), *onednn_params.find(item.key()))) << item.key();
  }

  // Forward and backward on a non-cubic batch of 2; fp32 tolerance relative
  // to each tensor's largest magnitude.
  const torch::Tensor x = torch::rand({2, in_channels, 8, 16, 12});
  const torch::Tensor y_libtorch = libtorch_net->forward(x);
  const torch::Tensor y_onednn = onednn_net->forward(x);
  // The oneDNN network runs channels-last inside but returns plain logits.
  EXPECT_TRUE(y_onednn.is_contiguous());
  const double y_scale = y_libtorch.abs().max().item<double>();
  EXPECT_LT((y_libtorch - y_onednn).abs().max().item<double>(), 1e-4 * y_scale);

  (y_libtorch * y_libtorch).sum().backward();
  (y_onednn * y_onednn).sum().backward();
  for (const auto& item : libtorch_params) {
    const torch::Tensor expected = item.value().grad();
    const torch::Tensor actual = onednn_params.find(item.key())->grad();
    ASSERT_TRUE(actual.defined()) << item.key();
    const double scale = expected.abs().max().item<double>() + 1e-12;
    EXPECT_LT((expected - actual).abs().max().item<double>(), 1e-3 * scale) << item.key();
  }
}

}  // namespace

TEST(UNetBackends, OnednnMatchesLibtorch) { expect_backends_match(3); }

// One input channel makes the input contiguous in both layouts; the oneDNN
// network must still turn channels-last and give the same results.
TEST(UNetBackends, OnednnMatchesLibtorchOneChannel) { expect_backends_match(1); }
