// Tests of the segmentation loss and Dice metrics against hand-worked values
// on tiny tensors, LibTorch's own cross-entropy, and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "train/loss.hpp"

namespace {

using scaffold::class_weights_from_counts;
using scaffold::hard_dice_per_sample;
using scaffold::segmentation_loss;
using scaffold::soft_dice_per_sample;

constexpr double kSmooth = 1e-6;

double dice(double intersection_x2, double total) { return (intersection_x2 + kSmooth) / (total + kSmooth); }

// Builds logits [N, C, 1, 1, V] from per-sample rows of per-class values:
// values[n][c][v].
torch::Tensor logits_from(const std::vector<std::vector<std::vector<float>>>& values) {
  const int64_t n = static_cast<int64_t>(values.size());
  const int64_t c = static_cast<int64_t>(values[0].size());
  const int64_t v = static_cast<int64_t>(values[0][0].size());
  torch::Tensor logits = torch::empty({n, c, 1, 1, v});
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < c; ++k) {
      for (int64_t j = 0; j < v; ++j) {
        logits[i][k][0][0][j] = values[i][k][j];
      }
    }
  }
  return logits;
}

// Builds a target [N, 1, 1, V] from class ids per sample.
torch::Tensor target_from(const std::vector<std::vector<int64_t>>& ids) {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t v = static_cast<int64_t>(ids[0].size());
  torch::Tensor target = torch::empty({n, 1, 1, v}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < v; ++j) {
      target[i][0][0][j] = ids[i][j];
    }
  }
  return target;
}

// Logits of +30 on the chosen class and -30 elsewhere, so softmax is one-hot
// to float32 precision. prediction: [N, D, H, W] class ids.
torch::Tensor confident_logits(const torch::Tensor& prediction, int64_t n_classes) {
  return torch::one_hot(prediction, n_classes).permute({0, 4, 1, 2, 3}).to(torch::kFloat).mul(60).sub(30);
}

TEST(ClassWeights, HandCounts) {
  const torch::Tensor weights = class_weights_from_counts(300, 100, 4);
  ASSERT_EQ(weights.sizes().vec(), std::vector<int64_t>{4});
  EXPECT_EQ(weights.scalar_type(), torch::kFloat);
  EXPECT_FLOAT_EQ(weights[0].item<float>(), 400.0f / 300.0f);
  EXPECT_FLOAT_EQ(weights[1].item<float>(), 4.0f);
  EXPECT_FLOAT_EQ(weights[2].item<float>(), 4.0f);
  EXPECT_FLOAT_EQ(weights[3].item<float>(), 4.0f);
}

TEST(ClassWeights, OnesWhenCountIsZero) {
  EXPECT_TRUE(torch::equal(class_weights_from_counts(0, 50, 3), torch::ones({3})));
  EXPECT_TRUE(torch::equal(class_weights_from_counts(50, 0, 3), torch::ones({3})));
  EXPECT_TRUE(torch::equal(class_weights_from_counts(0, 0, 2), torch::ones({2})));
}

TEST(ClassWeights, RejectsInvalidArguments) {
  EXPECT_THROW(class_weights_from_counts(-1, 5, 3), std::invalid_argument);
  EXPECT_THROW(class_weights_from_counts(5, 5, 1), std::invalid_argument);
}

// logits [1, 2, 1, 1, 2]: voxel 0 has p = (1/4, 3/4) and true class 1,
// voxel 1 has p = (2/3, 1/3) and true class 0.
class TwoVoxelCase : public ::testing::Test {
 protected:
  torch::Tensor logits = logits_from({{{0.0f, std::log(2.0f)}, {std::log(3.0f), 0.0f}}});
  torch::Tensor target = target_from({{1, 0}});
};

TEST_F(TwoVoxelCase, WeightedCrossEntropy) {
  const torch::Tensor weights = torch::tensor({2.0f, 0.5f});
  const auto terms = segmentation_loss(logits, target, weights);

  // (0.5 * -log(3/4) + 2 * -log(2/3)) / (0.5 + 2)
  const double expected = (0.5 * std::log(4.0 / 3.0) + 2.0 * std::log(3.0 / 2.0)) / 2.5;
  EXPECT_NEAR(terms.ce.item<double>(), expected, 1e-6);
}

TEST_F(TwoVoxelCase, UnweightedCrossEntropyIsVoxelMean) {
  const auto terms = segmentation_loss(logits, target, torch::Tensor());
  const double expected = (std::log(4.0 / 3.0) + std::log(3.0 / 2.0)) / 2.0;
  EXPECT_NEAR(terms.ce.item<double>(), expected, 1e-6);

  const auto with_unit_weights = segmentation_loss(logits, target, torch::ones({2}));
  EXPECT_NEAR(with_unit_weights.ce.item<double>(), expected, 1e-6);
}

TEST_F(TwoVoxelCase, SoftDiceAndTotal) {
  const auto terms = segmentation_loss(logits, target, torch::tensor({2.0f, 0.5f}));

  // Foreground class 1: sum p = 3/4 + 1/3, sum g = 1, I = 2 * 3/4.
  const double expected_dice = dice(1.5, 3.0 / 4.0 + 1.0 / 3.0 + 1.0);
  EXPECT_NEAR(terms.soft_dice.item<double>(), expected_dice, 1e-6);
  EXPECT_NEAR(terms.loss.item<double>(), terms.ce.item<double>() + 1.0 - expected_dice, 1e-6);

  const torch::Tensor per_sample = soft_dice_per_sample(logits, target);
  ASSERT_EQ(per_sample.sizes().vec(), std::vector<int64_t>{1});
  EXPECT_NEAR(per_sample[0].item<double>(), expected_dice, 1e-6);
}

TEST(SoftDice, AveragesSamplesAndForegroundClasses) {
  // Uniform probabilities 1/3 over 3 classes, 2 voxels per sample.
  const torch::Tensor logits = torch::zeros({2, 3, 1, 1, 2});
  const torch::Tensor target = target_from({{1, 2}, {0, 0}});

  // Sample 0, classes 1 and 2: sum p = 2/3, sum g = 1, I = 2/3.
  // Sample 1, classes 1 and 2: sum p = 2/3, sum g = 0, I = 0.
  const double sample0 = dice(2.0 / 3.0, 5.0 / 3.0);
  const double sample1 = dice(0.0, 2.0 / 3.0);
  EXPECT_NEAR(sample0, 0.4, 1e-6);

  const torch::Tensor per_sample = soft_dice_per_sample(logits, target);
  ASSERT_EQ(per_sample.sizes().vec(), std::vector<int64_t>{2});
  EXPECT_NEAR(per_sample[0].item<double>(), sample0, 1e-6);
  EXPECT_NEAR(per_sample[1].item<double>(), sample1, 1e-6);

  const auto terms = segmentation_loss(logits, target, torch::Tensor());
  EXPECT_NEAR(terms.soft_dice.item<double>(), (sample0 + sample1) / 2.0, 1e-6);
}

TEST(SegmentationLoss, PerfectPrediction) {
  torch::manual_seed(1);
  const torch::Tensor target = torch::randint(0, 4, {2, 4, 4, 4}, torch::kLong);
  const torch::Tensor logits = confident_logits(target, 4);
  const auto terms = segmentation_loss(logits, target, class_weights_from_counts(100, 28, 4));

  EXPECT_NEAR(terms.ce.item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(terms.soft_dice.item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(terms.loss.item<double>(), 0.0, 1e-5);
}

TEST(SegmentationLoss, MatchesLibTorchCrossEntropy) {
  torch::manual_seed(2);
  const torch::Tensor logits = torch::randn({2, 5, 3, 4, 2});
  const torch::Tensor target = torch::randint(0, 5, {2, 3, 4, 2}, torch::kLong);
  const torch::Tensor weights = torch::tensor({0.3f, 2.0f, 1.0f, 4.0f, 0.7f});

  namespace F = torch::nn::functional;
  const torch::Tensor expected = F::cross_entropy(logits, target, F::CrossEntropyFuncOptions().weight(weights));
  const auto terms = segmentation_loss(logits, target, weights);
  EXPECT_NEAR(terms.ce.item<double>(), expected.item<double>(), 1e-5);

  // Scaling every weight by the same factor leaves the weighted mean unchanged.
  const auto scaled = segmentation_loss(logits, target, weights * 10);
  EXPECT_NEAR(scaled.ce.item<double>(), terms.ce.item<double>(), 1e-5);
}

TEST(SegmentationLoss, GradientMatchesFiniteDifferences) {
  torch::manual_seed(3);
  const torch::Tensor logits = torch::randn({2, 3, 1, 2, 2}, torch::kDouble);
  const torch::Tensor target = target_from({{0, 1, 2, 1}, {2, 2, 0, 0}}).view({2, 1, 2, 2});
  const torch::Tensor weights = torch::tensor({0.5, 3.0, 3.0}, torch::kDouble);

  const torch::Tensor leaf = logits.clone().requires_grad_(true);
  const auto terms = segmentation_loss(leaf, target, weights);
  EXPECT_EQ(terms.loss.scalar_type(), torch::kDouble);
  terms.loss.backward();
  const torch::Tensor analytic = leaf.grad();

  // Central differences in float64, one logit at a time.
  constexpr double h = 1e-6;
  const torch::Tensor flat = logits.reshape(-1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    torch::Tensor plus = flat.clone();
    torch::Tensor minus = flat.clone();
    plus[i] += h;
    minus[i] -= h;
    const double loss_plus = segmentation_loss(plus.view_as(logits), target, weights).loss.item<double>();
    const double loss_minus = segmentation_loss(minus.view_as(logits), target, weights).loss.item<double>();
    const double numeric = (loss_plus - loss_minus) / (2 * h);
    EXPECT_NEAR(analytic.reshape(-1)[i].item<double>(), numeric, 1e-7) << "logit " << i;
  }

  // The float32 path gives the same gradient to float32 precision.
  const torch::Tensor leaf32 = logits.to(torch::kFloat).requires_grad_(true);
  segmentation_loss(leaf32, target, weights.to(torch::kFloat)).loss.backward();
  EXPECT_TRUE(torch::allclose(leaf32.grad().to(torch::kDouble), analytic, 1e-4, 1e-6));
}

TEST(SegmentationLoss, Int16TargetAccepted) {
  torch::manual_seed(4);
  const torch::Tensor logits = torch::randn({1, 3, 2, 2, 2});
  const torch::Tensor target = torch::randint(0, 3, {1, 2, 2, 2}, torch::kLong);
  const auto from_long = segmentation_loss(logits, target, torch::Tensor());
  const auto from_short = segmentation_loss(logits, target.to(torch::kShort), torch::Tensor());
  EXPECT_EQ(from_long.loss.item<float>(), from_short.loss.item<float>());
}

TEST(SegmentationLoss, RejectsInvalidInput) {
  const torch::Tensor logits = torch::zeros({1, 3, 2, 2, 2});
  const torch::Tensor target = torch::zeros({1, 2, 2, 2}, torch::kLong);

  EXPECT_THROW(segmentation_loss(logits, torch::full({1, 2, 2, 2}, 3, torch::kLong), torch::Tensor()), std::invalid_argument);
  EXPECT_THROW(segmentation_loss(logits, torch::full({1, 2, 2, 2}, -1, torch::kLong), torch::Tensor()),
               std::invalid_argument);
  EXPECT_THROW(segmentation_loss(logits, torch::zeros({1, 2, 2, 3}, torch::kLong), torch::Tensor()),
               std::invalid_argument);
  EXPECT_THROW(segmentation_loss(logits, torch::zeros({1, 2, 2, 2}), torch::Tensor()), std::invalid_argument);
  EXPECT_THROW(segmentation_loss(logits, torch::zeros({1, 2, 2, 2}, torch::kLong), torch::ones({2})),
               std::invalid_argument);
  EXPECT_THROW(segmentation_loss(torch::zeros({1, 1, 2, 2, 2}), torch::zeros({1, 2, 2, 2}, torch::kLong),
                                 torch::Tensor()),
               std::invalid_argument);
  EXPECT_THROW(hard_dice_per_sample(torch::zeros({3, 2, 2, 2}), torch::zeros({1, 2, 2, 2}, torch::kLong)),
               std::invalid_argument);
}

TEST(HardDice, TwoOfThreeVoxelsRight) {
  // Sample 0: target (1, 1, 1), prediction (1, 1, 0): I = 2 * 2, S = 2 + 3.
  // Sample 1: target (0, 1, 0), prediction (1, 1, 1): I = 2 * 1, S = 3 + 1.
  const torch::Tensor target = target_from({{1, 1, 1}, {0, 1, 0}});
  const torch::Tensor prediction = target_from({{1, 1, 0}, {1, 1, 1}});
  const torch::Tensor per_sample = hard_dice_per_sample(confident_logits(prediction, 2), target);

  ASSERT_EQ(per_sample.sizes().vec(), std::vector<int64_t>{2});
  EXPECT_EQ(per_sample.scalar_type(), torch::kFloat);
  EXPECT_NEAR(per_sample[0].item<double>(), dice(4.0, 5.0), 1e-7);
  EXPECT_NEAR(per_sample[1].item<double>(), dice(2.0, 4.0), 1e-7);
  EXPECT_NEAR(per_sample[0].item<double>(), 0.8, 1e-6);
}

TEST(HardDice, DisjointPredictionScoresZero) {
  const torch::Tensor target = torch::ones({1, 2, 2, 2}, torch::kLong);
  const torch::Tensor prediction = torch::full({1, 2, 2, 2}, 2, torch::kLong);
  const torch::Tensor per_sample = hard_dice_per_sample(confident_logits(prediction, 3), target);
  EXPECT_NEAR(per_sample[0].item<double>(), 0.0, 1e-6);
}

TEST(HardDice, EmptyClassInBothScoresOne) {
  // Class 1: target (1, 1, 0, 0), prediction (1, 0, 0, 0): 2 * 1 / (1 + 2).
  // Class 2 is absent from both, so its Dice is 1.
  const torch::Tensor target = target_from({{1, 1, 0, 0}});
  const torch::Tensor prediction = target_from({{1, 0, 0, 0}});
  const torch::Tensor per_sample = hard_dice_per_sample(confident_logits(prediction, 3), target);
  EXPECT_NEAR(per_sample[0].item<double>(), (dice(2.0, 3.0) + 1.0) / 2.0, 1e-7);

  // All background in both: every foreground class scores 1.
  const torch::Tensor background = torch::zeros({1, 1, 1, 4}, torch::kLong);
  EXPECT_NEAR(hard_dice_per_sample(confident_logits(background, 3), background)[0].item<double>(), 1.0, 1e-7);
}

TEST(HardDice, PerfectPredictionScoresOne) {
  torch::manual_seed(5);
  const torch::Tensor target = torch::randint(0, 6, {3, 4, 4, 4}, torch::kLong);
  const torch::Tensor per_sample = hard_dice_per_sample(confident_logits(target, 6), target);
  EXPECT_TRUE(torch::allclose(per_sample, torch::ones({3}), 0.0, 1e-6));
}

TEST(HardDice, TiesGoToLowestClass) {
  // Equal logits predict class 0 everywhere, so class 1 (present in the
  // target) scores ~0 and class 2 (absent from both) scores 1.
  const torch::Tensor logits = torch::zeros({1, 3, 1, 1, 2});
  const torch::Tensor target = target_from({{1, 0}});
  EXPECT_NEAR(hard_dice_per_sample(logits, target)[0].item<double>(), (dice(0.0, 1.0) + 1.0) / 2.0, 1e-7);
}

}  // namespace
