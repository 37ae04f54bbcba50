// Segmentation loss and Dice metrics: class-weighted cross-entropy plus
// (1 - soft Dice over the foreground classes), and the hard (argmax) Dice used
// for validation. Class 0 is the background and never enters a Dice mean.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace scaffold {

// Returns the cross-entropy class weights [n_classes] float32 from voxel counts
// over the sampled training masks: w[0] = total / background and
// w[1..n_classes-1] = total / foreground. Returns all ones when either count
// is 0. Throws std::invalid_argument for negative counts or n_classes < 2.
torch::Tensor class_weights_from_counts(std::int64_t background_voxels,
                                        std::int64_t foreground_voxels, int n_classes);

// Terms of one batch's loss, each a scalar tensor (float32, or float64 for
// float64 logits). `loss` carries the autograd graph back to the logits.
struct LossTerms {
  torch::Tensor loss;       // ce + (1 - soft_dice)
  torch::Tensor ce;         // weighted mean cross-entropy over all voxels
  torch::Tensor soft_dice;  // soft Dice averaged over samples and foreground classes
};

// Computes the training loss.
//   logits:        [N, C, D, H, W], any floating type, upcast to float32
//                  (float64 stays float64)
//   target:        [N, D, H, W], integer class ids in [0, C)
//   class_weights: [C] float32, or an undefined tensor for unweighted
//                  cross-entropy (mean over voxels)
// Weighted CE = sum(-w[y] * log p_y) / max(sum(w[y]), float32 eps).
// Soft Dice per (sample, class): I = 2 * sum(p * g), S = sum(p) + sum(g),
// S := I when S == 0, dice = (I + 1e-6) / (S + 1e-6).
// Throws std::invalid_argument on mismatched shapes, C < 2 or a class id
// outside [0, C).
LossTerms segmentation_loss(const torch::Tensor& logits, const torch::Tensor& target,
                            const torch::Tensor& class_weights);

// Returns the soft Dice per sample [N], averaged over the foreground
// classes 1..C-1, with the same formula and input rules as segmentation_loss.
torch::Tensor soft_dice_per_sample(const torch::Tensor& logits, const torch::Tensor& target);

// Returns the hard Dice per sample [N] float32: the prediction is the argmax
// over classes (the lowest class id wins ties), and a class that is empty in
// both prediction and target scores 1. Averaged over foreground classes
// 1..C-1. Records no autograd graph.
torch::Tensor hard_dice_per_sample(const torch::Tensor& logits, const torch::Tensor& target);

}  // namespace scaffold
