#include "train/loss.hpp"

#include <limits>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace scaffold {

namespace {

// Smoothing term of the Dice ratio. It also makes an empty-vs-empty class
// score exactly 1.
constexpr double kDiceSmooth = 1e-6;

// Returns the dtype the loss is computed in: float32, or float64 for float64
// logits so that gradient checks can run in double precision.
torch::ScalarType loss_dtype(const torch::Tensor& logits) {
  return logits.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// Validates the shapes and class ids and returns the target as int64.
torch::Tensor checked_target(const torch::Tensor& logits, const torch::Tensor& target) {
  if (logits.dim() != 5) {
    throw std::invalid_argument(
        fmt::format("logits must be 5-D [N, C, D, H, W], got shape {}", fmt::join(logits.sizes(), "x")));
  }
  const std::int64_t n_classes = logits.size(1);
  if (n_classes < 2) {
    throw std::invalid_argument(fmt::format(
        "logits have {} class channel(s), but the Dice terms need a background class and at least one "
        "foreground class",
        n_classes));
  }
  const bool same_shape = target.dim() == 4 && target.size(0) == logits.size(0) &&
                          target.size(1) == logits.size(2) && target.size(2) == logits.size(3) &&
                          target.size(3) == logits.size(4);
  if (!same_shape) {
    throw std::invalid_argument(fmt::format("target shape {} does not match logits shape {}, expected [N, D, H, W]",
                                            fmt::join(target.sizes(), "x"), fmt::join(logits.sizes(), "x")));
  }
  if (c10::isFloatingType(target.scalar_type()) || target.scalar_type() == torch::kBool) {
    throw std::invalid_argument(fmt::format("target must contain integer class ids, got dtype {}",
                                            c10::toString(target.scalar_type())));
  }

  torch::Tensor target_long = target.to(torch::kLong);
  if (target_long.numel() > 0) {
    const auto [min_id, max_id] = torch::aminmax(target_long);
    const std::int64_t min_value = min_id.item<std::int64_t>();
    const std::int64_t max_value = max_id.item<std::int64_t>();
    if (min_value < 0 || max_value >= n_classes) {
      throw std::invalid_argument(fmt::format(
          "target class ids span [{}, {}] but the logits have {} classes, so ids must lie in [0, {}]",
          min_value, max_value, n_classes, n_classes - 1));
    }
  }
  return target_long;
}

// Returns ids [N, V] where each class id c of sample n becomes n * C + c, so one
// bincount over the flattened tensor counts every (sample, class) pair at once.
torch::Tensor sample_class_ids(const torch::Tensor& class_ids, std::int64_t n_classes) {
  const std::int64_t n = class_ids.size(0);
  const torch::Tensor offsets = torch::arange(n, class_ids.options()).mul_(n_classes).view({n, 1});
  return class_ids.reshape({n, -1}) + offsets;
}

// Returns voxel counts [N, C] of each class id, as `dtype`.
torch::Tensor count_by_class(const torch::Tensor& ids, std::int64_t n, std::int64_t n_classes,
                             torch::ScalarType dtype) {
  return torch::bincount(ids.reshape(-1), /*weights=*/{}, n * n_classes).view({n, n_classes}).to(dtype);
}

// dice = (I + smooth) / (S + smooth) with S := I where S == 0.
// intersection_x2, total: [N, C] -> [N, C]
torch::Tensor dice_from_sums(const torch::Tensor& intersection_x2, const torch::Tensor& total) {
  const torch::Tensor denominator = torch::where(total == 0, intersection_x2, total);
  return (intersection_x2 + kDiceSmooth) / (denominator + kDiceSmooth);
}

// Returns the soft Dice [N, C] from log-probabilities and int64 targets.
// log_probs: [N, C, D, H, W] float32, target: [N, D, H, W] int64
torch::Tensor soft_dice_per_class(const torch::Tensor& log_probs, const torch::Tensor& target) {
  const std::int64_t n = log_probs.size(0);
  const std::int64_t n_classes = log_probs.size(1);

  // sum(p) over voxels: [N, C]
  const torch::Tensor probs = log_probs.exp();
  const torch::Tensor prob_sums = probs.sum({2, 3, 4});

  // sum(g) over voxels: [N, C], counted without building a one-hot tensor.
  const torch::Tensor ids = sample_class_ids(target, n_classes);
  const torch::Tensor target_counts = count_by_class(ids, n, n_classes, probs.scalar_type());

  // sum(p * g) is the probability of the true class summed per true class:
  // gather p_y [N, V], then scatter-add it into its class slot [N, C].
  const torch::Tensor true_probs = probs.gather(1, target.unsqueeze(1)).reshape({n, -1});
  const torch::Tensor intersections =
      torch::zeros({n, n_classes}, probs.options()).scatter_add(1, target.reshape({n, -1}), true_probs);

  return dice_from_sums(2 * intersections, prob_sums + target_counts);
}

// Mean over the foreground classes 1..C-1. dice: [N, C] -> [N]
torch::Tensor foreground_mean(const torch::Tensor& dice) {
  return dice.narrow(1, 1, dice.size(1) - 1).mean(1);
}

}  // namespace

torch::Tensor class_weights_from_counts(std::int64_t background_voxels, std::int64_t foreground_voxels,
                                        int n_classes) {
  if (n_classes < 2) {
    throw std::invalid_argument(fmt::format("n_classes={} but class weights need at least 2 classes", n_classes));
  }
  if (background_voxels < 0 || foreground_voxels < 0) {
    throw std::invalid_argument(fmt::format("voxel counts must be non-negative, got background={} foreground={}",
                                            background_voxels, foreground_voxels));
  }

  torch::Tensor weights = torch::ones({n_classes}, torch::kFloat);
  if (background_voxels == 0 || foreground_voxels == 0) {
    return weights;
  }

  // Ratios in double, then rounded once to float32.
  const double total = static_cast<double>(background_voxels) + static_cast<double>(foreground_voxels);
  weights.fill_(total / static_cast<double>(foreground_voxels));
  weights[0] = total / static_cast<double>(background_voxels);
  return weights;
}

LossTerms segmentation_loss(const torch::Tensor& logits, const torch::Tensor& target,
                            const torch::Tensor& class_weights) {
  const torch::Tensor target_long = checked_target(logits, target);
  const std::int64_t n_classes = logits.size(1);

  // log_probs: [N, C, D, H, W] float32
  // true_log_probs: [N * D * H * W]
  const torch::Tensor log_probs = torch::log_softmax(logits.to(loss_dtype(logits)), 1);
  const torch::Tensor true_log_probs = log_probs.gather(1, target_long.unsqueeze(1)).reshape(-1);

  // Weighted mean cross-entropy: the denominator is the total weight of the
  // voxels' true classes, kept away from zero for an empty batch.
  torch::Tensor ce;
  if (class_weights.defined()) {
    if (class_weights.dim() != 1 || class_weights.size(0) != n_classes) {
      throw std::invalid_argument(fmt::format("class_weights has shape {} but the logits have {} classes",
                                              fmt::join(class_weights.sizes(), "x"), n_classes));
    }
    const torch::Tensor voxel_weights =
        class_weights.to(log_probs.options()).index_select(0, target_long.reshape(-1));
    const double eps = std::numeric_limits<float>::epsilon();
    ce = -(voxel_weights * true_log_probs).sum() / voxel_weights.sum().clamp_min(eps);
  } else {
    ce = -true_log_probs.mean();
  }

  // soft_dice: scalar, mean over samples and foreground classes.
  const torch::Tensor soft_dice = foreground_mean(soft_dice_per_class(log_probs, target_long)).mean();

  return LossTerms{ce + (1 - soft_dice), ce, soft_dice};
}

torch::Tensor soft_dice_per_sample(const torch::Tensor& logits, const torch::Tensor& target) {
  const torch::Tensor target_long = checked_target(logits, target);
  const torch::Tensor log_probs = torch::log_softmax(logits.to(loss_dtype(logits)), 1);
  return foreground_mean(soft_dice_per_class(log_probs, target_long));
}

torch::Tensor hard_dice_per_sample(const torch::Tensor& logits, const torch::Tensor& target) {
  torch::NoGradGuard no_grad;
  const torch::Tensor target_long = checked_target(logits, target);
  const std::int64_t n = logits.size(0);
  const std::int64_t n_classes = logits.size(1);

  // prediction: [N, D, H, W] int64
  const torch::Tensor prediction = logits.argmax(1);

  // Voxel counts per (sample, class) [N, C]: predicted, true, and both.
  // Counts are exact integers, and the ratio is formed in float64.
  const torch::Tensor target_ids = sample_class_ids(target_long, n_classes);
  const torch::Tensor prediction_ids = sample_class_ids(prediction, n_classes);
  const torch::Tensor correct_ids = target_ids.masked_select(prediction_ids == target_ids);
  const torch::Tensor target_counts = count_by_class(target_ids, n, n_classes, torch::kDouble);
  const torch::Tensor prediction_counts = count_by_class(prediction_ids, n, n_classes, torch::kDouble);
  const torch::Tensor correct_counts = count_by_class(correct_ids, n, n_classes, torch::kDouble);

  const torch::Tensor dice = dice_from_sums(2 * correct_counts, prediction_counts + target_counts);
  return foreground_mean(dice).to(torch::kFloat);
}

}  // namespace scaffold
