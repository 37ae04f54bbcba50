// Learning-rate schedule, optimizer construction and gradient clipping.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

namespace scaffold {

// Returns the learning rate of PyTorch's CosineAnnealingWarmRestarts after
// `epochs_completed` calls to step() without an epoch argument:
//   lr = eta_min + (lr0 - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2
// where cycle i lasts T_i = T_0 * T_mult^i epochs and T_cur counts the epochs
// completed inside the current cycle. T_mult == 1 gives cycles of T_0 epochs.
// Throws std::invalid_argument when T_0 < 1, T_mult < 1 or epochs_completed < 0.
double cosine_warm_restarts_lr(double lr0, double eta_min, int T_0, int T_mult, std::int64_t epochs_completed);

// Per-epoch learning-rate schedule: cosine annealing with warm restarts, or a
// constant lr0 when disabled. Step it once per epoch, after validation.
class LrScheduler {
 public:
  LrScheduler(double lr0, double eta_min, int T_0, int T_mult, bool enabled = true);

  // Advances the schedule by one epoch.
  void step() { ++epochs_completed_; }

  // Returns the learning rate for the next epoch.
  double lr() const;

  std::int64_t epochs_completed() const { return epochs_completed_; }

  // Restores the position from a checkpoint. Throws std::invalid_argument for
  // a negative count.
  void set_epochs_completed(std::int64_t epochs_completed);

 private:
  double lr0_;
  double eta_min_;
  int T_0_;
  int T_mult_;
  bool enabled_;
  std::int64_t epochs_completed_ = 0;
};

// Creates the optimizer named by the config key `optimizer`:
//   "ADAM":    Adam, betas (0.9, 0.999), eps 1e-8, no weight decay, as
//              FusedAdam (train/fused_adam.hpp), which keeps LibTorch's
//              Adam state format
//   "RMSProp": RMSprop, alpha 0.99, eps 1e-8, momentum 0, no weight decay
//   "SGD":     plain SGD, no momentum
// Throws std::invalid_argument for any other name.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, std::vector<torch::Tensor> params,
                                                        double lr);

// Sets the learning rate of every parameter group.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

// Scales the gradients in place so their global L2 norm is at most max_norm,
// with PyTorch's rule: coefficient = min(1, max_norm / (norm + 1e-6)).
// Parameters without a gradient are skipped. Returns the norm before clipping.
double clip_grad_norm(std::vector<torch::Tensor> params, double max_norm);

}  // namespace scaffold
