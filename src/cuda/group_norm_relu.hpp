// Fused GroupNorm + ReLU for bf16 channels-last activations on CUDA, as a
// LibTorch autograd function over the kernels in group_norm_relu_kernels.hpp.
// Compiled only in CUDA builds (SCAFFOLD_HAVE_CUDA).
//
// Under bf16 autocast LibTorch runs group_norm in float32, so the unfused
// GroupNorm + ReLU reads bf16, writes a float32 activation and reads it again
// for the ReLU. The fused function reads and writes bf16 and keeps only float32
// statistics.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

namespace scaffold::cuda {

// Returns why fused_group_norm_relu cannot take x with `groups` groups, or an
// empty string when it can: x must be a 5-D [N, C, D, H, W] bf16 CUDA tensor,
// contiguous in ChannelsLast3d, with a shape the kernels support
// (group_norm_relu_unsupported_reason).
std::string fused_group_norm_relu_unsupported_reason(const at::Tensor& x, std::int64_t groups);

// Computes relu(group_norm(x, groups, weight, bias, eps)).
//   x:            [N, C, D, H, W] bf16 on CUDA, ChannelsLast3d
//   weight, bias: [C] float32 or bf16 on the same device (GroupNorm's affine parameters)
//   returns:      [N, C, D, H, W] bf16, ChannelsLast3d
// Gradients flow to x, weight and bias; a second derivative is not
// available. Throws std::invalid_argument with the reason when the inputs do
// not qualify, and std::runtime_error when a kernel launch fails.
at::Tensor fused_group_norm_relu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 std::int64_t groups, double eps);

}  // namespace scaffold::cuda
