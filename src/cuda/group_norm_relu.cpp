#include "cuda/group_norm_relu.hpp"

#include <stdexcept>
#include <string>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/autograd.h>

#include "cuda/group_norm_relu_kernels.hpp"

namespace scaffold::cuda {

namespace {

GroupNormReluShape shape_of(const at::Tensor& x, std::int64_t groups) {
  return GroupNormReluShape{x.size(0), x.size(2) * x.size(3) * x.size(4), x.size(1), groups};
}

GroupNormReluPlan plan_for(const at::Tensor& x, std::int64_t groups) {
  const int multiprocessors = at::cuda::getDeviceProperties(x.get_device())->multiProcessorCount;
  return plan_group_norm_relu(shape_of(x, groups), multiprocessors);
}

void check_parameter(const at::Tensor& x, const at::Tensor& parameter, const char* name) {
  if (!parameter.defined()) {
    throw std::invalid_argument(fmt::format("fused_group_norm_relu: {} is undefined, expected shape [{}]", name,
                                            x.size(1)));
  }
  if (parameter.dim() != 1 || parameter.size(0) != x.size(1)) {
    throw std::invalid_argument(fmt::format("fused_group_norm_relu: {} has shape [{}], expected [{}] (one value per "
                                            "channel of x)",
                                            name, fmt::join(parameter.sizes(), ", "), x.size(1)));
  }
  if (parameter.device() != x.device()) {
    throw std::invalid_argument(fmt::format("fused_group_norm_relu: {} is on {} but x is on {}", name,
                                            parameter.device().str(), x.device().str()));
  }
  if (parameter.scalar_type() != at::kFloat && parameter.scalar_type() != at::kBFloat16) {
    throw std::invalid_argument(fmt::format("fused_group_norm_relu: {} has dtype {}, expected float32 or bfloat16",
                                            name, c10::toString(parameter.scalar_type())));
  }
}

const __nv_bfloat16* bf16_data(const at::Tensor& tensor) {
  return reinterpret_cast<const __nv_bfloat16*>(tensor.data_ptr<at::BFloat16>());
}

__nv_bfloat16* bf16_mutable_data(at::Tensor& tensor) {
  return reinterpret_cast<__nv_bfloat16*>(tensor.data_ptr<at::BFloat16>());
}

// Autograd function behind fused_group_norm_relu. The forward saves x, gamma
// and beta as float32, mean and rstd for the backward.
class GroupNormReluFunction : public torch::autograd::Function<GroupNormReluFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, std::int64_t groups, double eps) {
    const c10::cuda::CUDAGuard device_guard(x.device());
    const GroupNormReluPlan plan = plan_for(x, groups);
    const at::Tensor gamma = weight.to(at::kFloat).contiguous();
    const at::Tensor beta = bias.to(at::kFloat).contiguous();

    at::Tensor y = at::empty_like(x, x.options(), at::MemoryFormat::ChannelsLast3d);
    at::Tensor mean = at::empty({x.size(0), groups}, x.options().dtype(at::kFloat));
    at::Tensor rstd = at::empty_like(mean);
    at::Tensor workspace =
        at::empty({static_cast<std::int64_t>(plan.forward_workspace_bytes)}, x.options().dtype(at::kByte));
    group_norm_relu_forward(plan, bf16_data(x), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                            static_cast<float>(eps), bf16_mutable_data(y), mean.data_ptr<float>(),
                            rstd.data_ptr<float>(), workspace.data_ptr(),
                            at::cuda::getCurrentCUDAStream(x.get_device()).stream());

    ctx->save_for_backward({x, gamma, beta, mean, rstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["weight_dtype"] = static_cast<std::int64_t>(weight.scalar_type());
    ctx->saved_data["bias_dtype"] = static_cast<std::int64_t>(bias.scalar_type());
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& gamma = saved[1];
    const at::Tensor& beta = saved[2];
    const at::Tensor& mean = saved[3];
    const at::Tensor& rstd = saved[4];
    if (!grad_outputs[0].defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }

    const c10::cuda::CUDAGuard device_guard(x.device());
    const std::int64_t groups = ctx->saved_data["groups"].toInt();
    const GroupNormReluPlan plan = plan_for(x, groups);
    const at::Tensor dy = grad_outputs[0].to(at::kBFloat16).contiguous(at::MemoryFormat::ChannelsLast3d);

    at::Tensor dx = at::empty_like(x, x.options(), at::MemoryFormat::ChannelsLast3d);
    at::Tensor dgamma = at::empty_like(gamma);
    at::Tensor dbeta = at::empty_like(beta);
    at::Tensor workspace =
        at::empty({static_cast<std::int64_t>(plan.backward_workspace_bytes)}, x.options().dtype(at::kByte));
    group_norm_relu_backward(plan, bf16_data(dy), bf16_data(x), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                             mean.data_ptr<float>(), rstd.data_ptr<float>(), bf16_mutable_data(dx),
                             dgamma.data_ptr<float>(), dbeta.data_ptr<float>(), workspace.data_ptr(),
                             at::cuda::getCurrentCUDAStream(x.get_device()).stream());

    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    const auto bias_dtype = static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
    return {dx, dgamma.to(weight_dtype), dbeta.to(bias_dtype), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::string fused_group_norm_relu_unsupported_reason(const at::Tensor& x, std::int64_t groups) {
  if (!x.defined()) {
    return "x is undefined";
  }
  if (!x.is_cuda()) {
    return fmt::format("x is on {}, the fused kernels run on CUDA only", x.device().str());
  }
  if (x.scalar_type() != at::kBFloat16) {
    return fmt::format("x has dtype {}, the fused kernels take bfloat16", c10::toString(x.scalar_type()));
  }
  if (x.dim() != 5) {
    return fmt::format("x has shape [{}], expected 5-D [N, C, D, H, W]", fmt::join(x.sizes(), ", "));
  }
  if (!x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    return "x is not contiguous in ChannelsLast3d; call .contiguous(at::MemoryFormat::ChannelsLast3d)";
  }
  if (reinterpret_cast<std::uintptr_t>(x.data_ptr()) % 16 != 0) {
    return "x does not start at a 16-byte boundary";
  }
  return group_norm_relu_unsupported_reason(shape_of(x, groups));
}

at::Tensor fused_group_norm_relu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 std::int64_t groups, double eps) {
  const std::string reason = fused_group_norm_relu_unsupported_reason(x, groups);
  if (!reason.empty()) {
    throw std::invalid_argument("fused_group_norm_relu: " + reason);
  }
  check_parameter(x, weight, "weight");
  check_parameter(x, bias, "bias");
  return GroupNormReluFunction::apply(x, weight, bias, groups, eps);
}

}  // namespace scaffold::cuda
