#include "train/schedule.hpp"

#include "train/fused_adam.hpp"

#include <cmath>
#include <numbers>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adam.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

namespace scaffold {

namespace {

void check_schedule(int T_0, int T_mult) {
  if (T_0 < 1) {
    throw std::invalid_argument(fmt::format("invalid T_0={}: the first cosine cycle must last at least 1 epoch", T_0));
  }
  if (T_mult < 1) {
    throw std::invalid_argument(fmt::format("invalid T_mult={}: the cycle growth factor must be at least 1", T_mult));
  }
}

}  // namespace

double cosine_warm_restarts_lr(double lr0, double eta_min, int T_0, int T_mult, std::int64_t epochs_completed) {
  check_schedule(T_0, T_mult);
  if (epochs_completed < 0) {
    throw std::invalid_argument(fmt::format("epochs_completed={} must be non-negative", epochs_completed));
  }

  // Locate the cycle containing `epochs_completed`: cycle i starts at
  // T_0 * (T_mult^i - 1) / (T_mult - 1) and lasts T_0 * T_mult^i epochs.
  // Walking cycle by cycle stays exact in integers, unlike the floating-point
  // logarithm PyTorch uses for an explicit epoch, and takes at most ~63 steps
  // when T_mult >= 2.
  std::int64_t cycle_length = T_0;
  std::int64_t in_cycle = epochs_completed;
  if (T_mult == 1) {
    in_cycle = epochs_completed % T_0;
  } else {
    while (in_cycle >= cycle_length) {
      in_cycle -= cycle_length;
      cycle_length *= T_mult;
    }
  }

  const double phase = std::numbers::pi * static_cast<double>(in_cycle) / static_cast<double>(cycle_length);
  return eta_min + (lr0 - eta_min) * (1.0 + std::cos(phase)) / 2.0;
}

LrScheduler::LrScheduler(double lr0, double eta_min, int T_0, int T_mult, bool enabled)
    : lr0_(lr0), eta_min_(eta_min), T_0_(T_0), T_mult_(T_mult), enabled_(enabled) {
  if (enabled_) {
    check_schedule(T_0_, T_mult_);
  }
}

double LrScheduler::lr() const {
  if (!enabled_) {
    return lr0_;
  }
  return cosine_warm_restarts_lr(lr0_, eta_min_, T_0_, T_mult_, epochs_completed_);
}

void LrScheduler::set_epochs_completed(std::int64_t epochs_completed) {
  if (epochs_completed < 0) {
    throw std::invalid_argument(fmt::format("epochs_completed={} must be non-negative", epochs_completed));
  }
  epochs_completed_ = epochs_completed;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, std::vector<torch::Tensor> params,
                                                        double lr) {
  if (name == "ADAM") {
    auto options = torch::optim::AdamOptions(lr).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.0).amsgrad(false);
    return std::make_unique<FusedAdam>(std::move(params), options);
  }
  if (name == "RMSProp") {
    auto options =
        torch::optim::RMSpropOptions(lr).alpha(0.99).eps(1e-8).weight_decay(0.0).momentum(0.0).centered(false);
    return std::make_unique<torch::optim::RMSprop>(std::move(params), options);
  }
  if (name == "SGD") {
    return std::make_unique<torch::optim::SGD>(std::move(params), torch::optim::SGDOptions(lr));
  }
  throw std::invalid_argument(
      fmt::format("unknown optimizer '{}': set the config key optimizer to ADAM, RMSProp or SGD", name));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    group.options().set_lr(lr);
  }
}

double clip_grad_norm(std::vector<torch::Tensor> params, double max_norm) {
  // LibTorch 1.13's clip_grad_norm_ follows PyTorch's rule (2-norm of all
  // gradients, coefficient max_norm / (norm + 1e-6) clamped to at most 1).
  return torch::nn::utils::clip_grad_norm_(std::move(params), max_norm);
}

}  // namespace scaffold
