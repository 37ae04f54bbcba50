// Tests of the cosine warm-restart schedule, the optimizer factory and
// gradient clipping against step-by-step simulations and hand-worked updates.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <stdexcept>

#include "train/schedule.hpp"

namespace {

using scaffold::cosine_warm_restarts_lr;
using scaffold::LrScheduler;

// PyTorch's CosineAnnealingWarmRestarts, one scheduler step at a time.
class SteppedCosineSchedule {
 public:
  SteppedCosineSchedule(double lr0, double eta_min, int T_0, int T_mult)
      : lr0_(lr0), eta_min_(eta_min), T_i_(T_0), T_mult_(T_mult) {}

  void step() {
    T_cur_ += 1;
    if (T_cur_ >= T_i_) {
      T_cur_ -= T_i_;
      T_i_ *= T_mult_;
    }
  }

  double lr() const {
    return eta_min_ + (lr0_ - eta_min_) * (1 + std::cos(std::numbers::pi * T_cur_ / T_i_)) / 2;
  }

 private:
  double lr0_;
  double eta_min_;
  long long T_cur_ = 0;
  long long T_i_;
  long long T_mult_;
};

TEST(CosineWarmRestarts, MatchesSteppedSimulation) {
  const std::vector<std::pair<int, int>> settings = {{10, 2}, {1, 2}, {3, 3}, {10, 1}, {100, 2}, {1, 1}, {7, 5}};
  for (const auto& [T_0, T_mult] : settings) {
    SteppedCosineSchedule simulation(1e-3, 1e-4, T_0, T_mult);
    for (int epoch = 0; epoch <= 500; ++epoch) {
      ASSERT_NEAR(cosine_warm_restarts_lr(1e-3, 1e-4, T_0, T_mult, epoch), simulation.lr(), 1e-15)
          << "T_0=" << T_0 << " T_mult=" << T_mult << " epoch=" << epoch;
      simulation.step();
    }
  }
}

TEST(CosineWarmRestarts, KnownValues) {
  const double lr0 = 1e-3;
  const double eta_min = 1e-4;
  const double mid = (lr0 + eta_min) / 2;

  EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(lr0, eta_min, 10, 2, 0), lr0);
  EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(lr0, eta_min, 10, 2, 5), mid);

  // Restarts after epochs 10, 30, 70 and 150; mid-cycle at 20, 50 and 110.
  // The last epoch of a cycle of 10 or more epochs sits within
  // (1 + cos(0.9 pi)) / 2 < 2.5% of the range above eta_min.
  for (const int restart : {10, 30, 70, 150}) {
    EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(lr0, eta_min, 10, 2, restart), lr0) << restart;
    EXPECT_LT(cosine_warm_restarts_lr(lr0, eta_min, 10, 2, restart - 1) - eta_min, 0.025 * (lr0 - eta_min))
        << restart;
  }
  for (const int middle : {20, 50, 110}) {
    EXPECT_NEAR(cosine_warm_restarts_lr(lr0, eta_min, 10, 2, middle), mid, 1e-15) << middle;
  }

  // Last epoch of the first cycle: T_cur = 9 of T_i = 10.
  const double expected_9 = eta_min + (lr0 - eta_min) * (1 + std::cos(0.9 * std::numbers::pi)) / 2;
  EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(lr0, eta_min, 10, 2, 9), expected_9);

  // Fixed cycles: T_mult = 1 restarts every T_0 epochs.
  EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(lr0, eta_min, 4, 1, 8), lr0);
  EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(lr0, eta_min, 4, 1, 10), mid);
}

TEST(CosineWarmRestarts, HugeEpochCountStaysInRange) {
  const double lr = cosine_warm_restarts_lr(1e-3, 1e-4, 1, 2, std::int64_t{1} << 61);
  EXPECT_GE(lr, 1e-4);
  EXPECT_LE(lr, 1e-3);

  // 2^61 - 1 epochs complete cycles 0..60 exactly, so the next epoch restarts.
  EXPECT_DOUBLE_EQ(cosine_warm_restarts_lr(1e-3, 1e-4, 1, 2, (std::int64_t{1} << 61) - 1), 1e-3);
}

TEST(CosineWarmRestarts, RejectsInvalidArguments) {
  EXPECT_THROW(cosine_warm_restarts_lr(1e-3, 1e-4, 0, 2, 0), std::invalid_argument);
  EXPECT_THROW(cosine_warm_restarts_lr(1e-3, 1e-4, 10, 0, 0), std::invalid_argument);
  EXPECT_THROW(cosine_warm_restarts_lr(1e-3, 1e-4, 10, 2, -1), std::invalid_argument);
  EXPECT_THROW(LrScheduler(1e-3, 1e-4, 0, 2), std::invalid_argument);
}

TEST(LrScheduler, StepsThroughSchedule) {
  LrScheduler scheduler(1e-3, 1e-4, 10, 2);
  SteppedCosineSchedule simulation(1e-3, 1e-4, 10, 2);
  for (int epoch = 0; epoch < 40; ++epoch) {
    EXPECT_EQ(scheduler.epochs_completed(), epoch);
    EXPECT_NEAR(scheduler.lr(), simulation.lr(), 1e-15) << epoch;
    scheduler.step();
    simulation.step();
  }

  scheduler.set_epochs_completed(30);
  EXPECT_DOUBLE_EQ(scheduler.lr(), 1e-3);
  EXPECT_THROW(scheduler.set_epochs_completed(-1), std::invalid_argument);
}

TEST(LrScheduler, DisabledIsConstant) {
  // A disabled schedule ignores even invalid cycle settings.
  LrScheduler scheduler(2e-3, 1e-4, 0, 0, /*enabled=*/false);
  for (int epoch = 0; epoch < 25; ++epoch) {
    EXPECT_EQ(scheduler.lr(), 2e-3);
    scheduler.step();
  }
}

// f(x) = 0.5 * sum(a * x^2), so grad = a * x.
torch::Tensor quadratic_loss(const torch::Tensor& x, const torch::Tensor& a) { return 0.5 * (a * x * x).sum(); }

TEST(MakeOptimizer, AdamMatchesHandUpdate) {
  const torch::Tensor a = torch::tensor({1.0, 3.0}, torch::kDouble);
  torch::Tensor x = torch::tensor({1.0, -2.0}, torch::kDouble).requires_grad_(true);
  auto optimizer = scaffold::make_optimizer("ADAM", {x}, 0.1);

  // Hand-worked Adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
  // x -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
  const double lr = 0.1;
  const double b1 = 0.9;
  const double b2 = 0.999;
  const double eps = 1e-8;
  double expected[2] = {1.0, -2.0};
  double m[2] = {0, 0};
  double v[2] = {0, 0};
  const double coefficients[2] = {1.0, 3.0};
  for (int t = 1; t <= 3; ++t) {
    optimizer->zero_grad();
    quadratic_loss(x, a).backward();
    optimizer->step();

    for (int i = 0; i < 2; ++i) {
      const double g = coefficients[i] * expected[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(b1, t));
      const double v_hat = v[i] / (1 - std::pow(b2, t));
      expected[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
      EXPECT_NEAR(x[i].item<double>(), expected[i], 1e-12) << "step " << t << " element " << i;
    }

    // The first step moves each coordinate by almost exactly lr against the
    // sign of its gradient: x = (1, -2) -> (0.9, -1.9).
    if (t == 1) {
      EXPECT_NEAR(x[0].item<double>(), 0.9, 1e-7);
      EXPECT_NEAR(x[1].item<double>(), -1.9, 1e-7);
    }
  }
}

TEST(MakeOptimizer, RmsPropMatchesHandUpdate) {
  const torch::Tensor a = torch::tensor({2.0}, torch::kDouble);
  torch::Tensor x = torch::tensor({1.5}, torch::kDouble).requires_grad_(true);
  auto optimizer = scaffold::make_optimizer("RMSProp", {x}, 0.01);

  quadratic_loss(x, a).backward();
  optimizer->step();

  // With g = 3: square_avg = (1 - 0.99) g^2, then
  // x -= lr * g / (sqrt(square_avg) + eps).
  const double g = 3.0;
  const double expected = 1.5 - 0.01 * g / (std::sqrt(0.01 * g * g) + 1e-8);
  EXPECT_NEAR(x.item<double>(), expected, 1e-12);
}

TEST(MakeOptimizer, SgdAndLearningRateChange) {
  torch::Tensor x = torch::tensor({4.0}, torch::kDouble).requires_grad_(true);
  auto optimizer = scaffold::make_optimizer("SGD", {x}, 0.5);
  scaffold::set_learning_rate(*optimizer, 0.25);
  EXPECT_EQ(optimizer->param_groups()[0].options().get_lr(), 0.25);

  // grad of x^2 at 4 is 8; x = 4 - 0.25 * 8.
  (x * x).sum().backward();
  optimizer->step();
  EXPECT_DOUBLE_EQ(x.item<double>(), 2.0);
}

TEST(MakeOptimizer, RejectsUnknownName) {
  torch::Tensor x = torch::zeros({1}, torch::requires_grad());
  EXPECT_THROW(scaffold::make_optimizer("adam", {x}, 1e-3), std::invalid_argument);
  EXPECT_THROW(scaffold::make_optimizer("LAMB", {x}, 1e-3), std::invalid_argument);
}

TEST(ClipGradNorm, ScalesToMaxNorm) {
  torch::Tensor first = torch::zeros({2}, torch::kDouble).requires_grad_(true);
  torch::Tensor second = torch::zeros({1}, torch::kDouble).requires_grad_(true);
  torch::Tensor without_grad = torch::zeros({3}, torch::kDouble).requires_grad_(true);
  first.mutable_grad() = torch::tensor({3.0, 4.0}, torch::kDouble);
  second.mutable_grad() = torch::tensor({12.0}, torch::kDouble);

  // Global norm sqrt(9 + 16 + 144) = 13.
  const double norm = scaffold::clip_grad_norm({first, second, without_grad}, 1.0);
  EXPECT_DOUBLE_EQ(norm, 13.0);

  const double scale = 1.0 / (13.0 + 1e-6);
  EXPECT_NEAR(first.grad()[0].item<double>(), 3.0 * scale, 1e-12);
  EXPECT_NEAR(first.grad()[1].item<double>(), 4.0 * scale, 1e-12);
  EXPECT_NEAR(second.grad()[0].item<double>(), 12.0 * scale, 1e-12);
  const double clipped_norm = std::sqrt(first.grad().square().sum().item<double>() + second.grad().square().sum().item<double>());
  EXPECT_NEAR(clipped_norm, 1.0, 1e-6);
  EXPECT_FALSE(without_grad.grad().defined());
}

TEST(ClipGradNorm, LeavesSmallGradientsUnchanged) {
  torch::Tensor x = torch::zeros({2}, torch::kDouble).requires_grad_(true);
  x.mutable_grad() = torch::tensor({0.3, 0.4}, torch::kDouble);
  EXPECT_DOUBLE_EQ(scaffold::clip_grad_norm({x}, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(x.grad()[0].item<double>(), 0.3);
  EXPECT_DOUBLE_EQ(x.grad()[1].item<double>(), 0.4);
}

}  // namespace
