#include "train/fused_adam.hpp"

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/Parallel.h>
#include <c10/util/string_utils.h>
#include <torch/types.h>
#include <torch/utils.h>

namespace scaffold {

namespace {

// Float32 scalars of one parameter's update, computed as LibTorch's Adam
// computes them in double and passes them to its float kernels.
struct AdamScalars {
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float weight_decay;
  float sqrt_bias_correction2;
  float eps;
  float negative_step_size;
};

// Elements per parallel task: large enough that a task costs more than its
// dispatch, small enough that a 64 x 64 x 27 weight splits over 2 threads.
constexpr std::int64_t kGrain = 16384;

// The steps of LibTorch 1.13's Adam::step for one element, each rounded to
// float as its own elementwise operation rounds it:
//   grad = grad + weight_decay * param             (only with weight decay)
//   exp_avg = exp_avg * beta1;  exp_avg = exp_avg + (1 - beta1) * grad
//   exp_avg_sq = exp_avg_sq * beta2;  exp_avg_sq = exp_avg_sq + (1 - beta2) * grad * grad
//   denom = sqrt(exp_avg_sq) / sqrt(bias_correction2) + eps
//   param = param + (-lr / bias_correction1) * exp_avg / denom
__attribute__((target_clones("avx512f", "avx2", "default"))) void update_range(
    float* __restrict param, const float* __restrict grad, float* __restrict exp_avg,
    float* __restrict exp_avg_sq, std::int64_t count, const AdamScalars& s, bool decay) {
  for (std::int64_t i = 0; i < count; ++i) {
    float g = grad[i];
    if (decay) {
      const float decay_term = s.weight_decay * param[i];
      g = g + decay_term;
    }
    const float m_scaled = exp_avg[i] * s.beta1;
    const float m_step = s.one_minus_beta1 * g;
    const float m = m_scaled + m_step;
    const float v_scaled = exp_avg_sq[i] * s.beta2;
    const float g_scaled = s.one_minus_beta2 * g;
    const float v_step = g_scaled * g;
    const float v = v_scaled + v_step;
    const float denom = std::sqrt(v) / s.sqrt_bias_correction2 + s.eps;
    const float ratio = m / denom;
    const float update = s.negative_step_size * ratio;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = param[i] + update;
  }
}

bool fusable(const torch::Tensor& param) {
  const torch::Tensor& grad = param.grad();
  return param.device().is_cpu() && param.scalar_type() == torch::kFloat32 && param.is_contiguous() &&
         grad.device().is_cpu() && grad.scalar_type() == torch::kFloat32 && grad.is_contiguous() &&
         !grad.is_sparse() && grad.sizes() == param.sizes();
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  for (const auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    if (options.amsgrad()) {
      return Adam::step(std::move(closure));
    }
    for (const auto& param : group.params()) {
      if (param.grad().defined() && !fusable(param)) {
        return Adam::step(std::move(closure));
      }
    }
  }

  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }

  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    const double beta1 = std::get<0>(options.betas());
    const double beta2 = std::get<1>(options.betas());
    for (auto& param : group.params()) {
      if (!param.grad().defined()) {
        continue;
      }

      const std::string key = c10::guts::to_string(param.unsafeGetTensorImpl());
      auto found = state_.find(key);
      if (found == state_.end()) {
        auto state = std::make_unique<torch::optim::AdamParamState>();
        state->step(0);
        state->exp_avg(torch::zeros_like(param, torch::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(param, torch::MemoryFormat::Preserve));
        found = state_.emplace(key, std::move(state)).first;
      }
      auto& state = static_cast<torch::optim::AdamParamState&>(*found->second);
      state.step(state.step() + 1);

      const double bias_correction1 = 1 - std::pow(beta1, state.step());
      const double bias_correction2 = 1 - std::pow(beta2, state.step());
      const AdamScalars scalars{static_cast<float>(beta1),
                                static_cast<float>(1 - beta1),
                                static_cast<float>(beta2),
                                static_cast<float>(1 - beta2),
                                static_cast<float>(options.weight_decay()),
                                static_cast<float>(std::sqrt(bias_correction2)),
                                static_cast<float>(options.eps()),
                                static_cast<float>(-(options.lr() / bias_correction1))};
      const bool decay = options.weight_decay() != 0;

      float* param_data = param.data_ptr<float>();
      const float* grad_data = param.grad().data_ptr<float>();
      float* exp_avg = state.exp_avg().data_ptr<float>();
      float* exp_avg_sq = state.exp_avg_sq().data_ptr<float>();
      at::parallel_for(0, param.numel(), kGrain, [&](std::int64_t begin, std::int64_t end) {
        update_range(param_data + begin, grad_data + begin, exp_avg + begin, exp_avg_sq + begin, end - begin,
                     scalars, decay);
      });
    }
  }
  return loss;
}

}  // namespace scaffold
