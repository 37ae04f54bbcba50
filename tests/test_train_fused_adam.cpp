// Tests of FusedAdam against LibTorch's torch::optim::Adam: the same updates
// within float32 rounding, the same state and serialized format, fallbacks
// to LibTorch's step, and bitwise results for any thread count.
#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "train/fused_adam.hpp"
#include "train/schedule.hpp"

namespace {

using scaffold::FusedAdam;

// Shapes of a small network: a conv weight, a size that is no multiple of
// any vector width, a single element, and one large enough to split over
// threads.
const std::vector<std::vector<std::int64_t>> kShapes = {{8, 5, 3, 3, 3}, {37}, {1}, {64, 64, 3, 3, 3}};

std::vector<torch::Tensor> make_parameters(std::uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> parameters;
  for (const auto& shape : kShapes) parameters.push_back(torch::randn(shape).requires_grad_(true));
  return parameters;
}

std::vector<torch::Tensor> clone_parameters(const std::vector<torch::Tensor>& parameters) {
  std::vector<torch::Tensor> clones;
  for (const auto& p : parameters) clones.push_back(p.detach().clone().requires_grad_(true));
  return clones;
}

// Sets gradients drawn from `seed`, the same for both parameter sets.
void set_gradients(std::vector<torch::Tensor>& parameters, std::uint64_t seed) {
  torch::manual_seed(seed);
  for (auto& p : parameters) p.mutable_grad() = torch::randn(p.sizes()) * 0.1;
}

double max_relative_difference(const torch::Tensor& actual, const torch::Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  return (actual - expected).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// Runs `steps` steps of both optimizers on equal parameters and gradients
// and compares parameters and moments after every step.
void expect_tracks_libtorch(const torch::optim::AdamOptions& options, int steps) {
  std::vector<torch::Tensor> fused_params = make_parameters(3);
  std::vector<torch::Tensor> reference_params = clone_parameters(fused_params);
  FusedAdam fused(fused_params, options);
  torch::optim::Adam reference(reference_params, options);

  for (int step = 1; step <= steps; ++step) {
    set_gradients(fused_params, 100 + step);
    set_gradients(reference_params, 100 + step);
    fused.step();
    reference.step();
    for (std::size_t i = 0; i < fused_params.size(); ++i) {
      // Float32 rounding of a few operations per element: each parameter moves
      // by lr per step, and a differently fused multiply-add changes the last
      // bit of the update, so the parameters agree to about 1e-7 relative.
      EXPECT_LT(max_relative_difference(fused_params[i], reference_params[i]), 1e-6)
          << "parameter " << i << " after step " << step;
      const auto key = c10::guts::to_string(fused_params[i].unsafeGetTensorImpl());
      const auto reference_key = c10::guts::to_string(reference_params[i].unsafeGetTensorImpl());
      const auto& state = static_cast<const torch::optim::AdamParamState&>(*fused.state().at(key));
      const auto& reference_state =
          static_cast<const torch::optim::AdamParamState&>(*reference.state().at(reference_key));
      EXPECT_EQ(state.step(), reference_state.step());
      EXPECT_LT(max_relative_difference(state.exp_avg(), reference_state.exp_avg()), 1e-6) << "exp_avg " << i;
      EXPECT_LT(max_relative_difference(state.exp_avg_sq(), reference_state.exp_avg_sq()), 1e-6)
          << "exp_avg_sq " << i;
    }
  }
}

TEST(FusedAdam, TracksLibtorchAdam) {
  torch::set_num_threads(2);
  expect_tracks_libtorch(torch::optim::AdamOptions(1e-3), 6);
}

TEST(FusedAdam, TracksLibtorchWithWeightDecay) {
  torch::set_num_threads(2);
  expect_tracks_libtorch(torch::optim::AdamOptions(3e-2).betas({0.8, 0.95}).eps(1e-6).weight_decay(0.1), 6);
}

TEST(FusedAdam, FirstStepMovesByLearningRate) {
  // After one step the moments are (1 - b1) g and (1 - b2) g^2, and the bias
  // corrections cancel them, so each element moves by -lr * g / (|g| + eps),
  // which is -lr * sign(g) up to eps.
  torch::Tensor param = torch::zeros({5}).requires_grad_(true);
  param.mutable_grad() = torch::tensor({2.0F, -0.5F, 1e-3F, -4.0F, 0.25F});
  FusedAdam optimizer(std::vector<torch::Tensor>{param}, torch::optim::AdamOptions(0.01).eps(1e-8));
  optimizer.step();
  const std::vector<float> expected = {-0.01F, 0.01F, -0.01F, 0.01F, -0.01F};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(param[i].item<float>(), expected[i], 1e-7) << i;
}

TEST(FusedAdam, ThreadCountDoesNotChangeBits) {
  std::vector<torch::Tensor> results;
  for (const int threads : {1, 2, 3}) {
    torch::set_num_threads(threads);
    std::vector<torch::Tensor> params = make_parameters(5);
    FusedAdam optimizer(params, torch::optim::AdamOptions(1e-3));
    for (int step = 0; step < 3; ++step) {
      set_gradients(params, 200 + step);
      optimizer.step();
    }
    results.push_back(params.back().detach().clone());
  }
  torch::set_num_threads(2);
  EXPECT_TRUE(torch::equal(results[0], results[1]));
  EXPECT_TRUE(torch::equal(results[0], results[2]));
}

TEST(FusedAdam, SkipsParametersWithoutGradient) {
  std::vector<torch::Tensor> params = make_parameters(7);
  FusedAdam optimizer(params, torch::optim::AdamOptions(1e-3));
  const torch::Tensor before = params[1].detach().clone();
  set_gradients(params, 300);
  params[1].mutable_grad() = torch::Tensor();
  optimizer.step();
  EXPECT_TRUE(torch::equal(params[1], before));
  EXPECT_EQ(optimizer.state().count(c10::guts::to_string(params[1].unsafeGetTensorImpl())), 0u);
  EXPECT_EQ(optimizer.state().size(), kShapes.size() - 1);
}

TEST(FusedAdam, FallsBackToLibtorchStep) {
  // amsgrad and a non-contiguous parameter both run LibTorch's own step, so
  // the results equal torch::optim::Adam's bit for bit.
  for (const bool amsgrad : {true, false}) {
    torch::manual_seed(9);
    torch::Tensor fused_param = amsgrad ? torch::randn({6, 4}) : torch::randn({4, 6}).t();
    fused_param.requires_grad_(true);
    torch::Tensor reference_param = fused_param.detach().clone().requires_grad_(true);
    ASSERT_EQ(fused_param.is_contiguous(), amsgrad);
    const auto options = torch::optim::AdamOptions(1e-2).amsgrad(amsgrad);
    FusedAdam fused(std::vector<torch::Tensor>{fused_param}, options);
    torch::optim::Adam reference(std::vector<torch::Tensor>{reference_param}, options);
    for (int step = 0; step < 3; ++step) {
      const torch::Tensor grad = torch::randn({6, 4});
      fused_param.mutable_grad() = grad.clone();
      reference_param.mutable_grad() = grad.clone();
      fused.step();
      reference.step();
    }
    EXPECT_TRUE(torch::equal(fused_param, reference_param)) << (amsgrad ? "amsgrad" : "non-contiguous");
  }
}

TEST(FusedAdam, StateLoadsIntoLibtorchAdam) {
  // Two fused steps, then the state moves through torch::save / torch::load
  // into torch::optim::Adam, and both take a third step from there.
  std::vector<torch::Tensor> fused_params = make_parameters(11);
  FusedAdam fused(fused_params, torch::optim::AdamOptions(1e-3));
  for (int step = 0; step < 2; ++step) {
    set_gradients(fused_params, 400 + step);
    fused.step();
  }
  std::stringstream archive;
  torch::save(fused, archive);

  std::vector<torch::Tensor> reference_params = clone_parameters(fused_params);
  torch::optim::Adam reference(reference_params, torch::optim::AdamOptions(1e-3));
  torch::load(reference, archive);

  set_gradients(fused_params, 500);
  set_gradients(reference_params, 500);
  fused.step();
  reference.step();
  for (std::size_t i = 0; i < fused_params.size(); ++i) {
    EXPECT_LT(max_relative_difference(fused_params[i], reference_params[i]), 1e-6) << i;
    const auto key = c10::guts::to_string(reference_params[i].unsafeGetTensorImpl());
    EXPECT_EQ(static_cast<const torch::optim::AdamParamState&>(*reference.state().at(key)).step(), 3);
  }
}

TEST(FusedAdam, MakeOptimizerReturnsFusedAdam) {
  std::vector<torch::Tensor> params = make_parameters(13);
  const auto optimizer = scaffold::make_optimizer("ADAM", params, 1e-3);
  EXPECT_NE(dynamic_cast<FusedAdam*>(optimizer.get()), nullptr);
}

}  // namespace
