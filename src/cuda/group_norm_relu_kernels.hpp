// Fused GroupNorm + ReLU on channels-last 3D bf16 activations, forward and
// backward, as raw-pointer CUDA launchers (no LibTorch).
//
// Layout: x, y, dy and dx are [N, D, H, W, C] bf16, contiguous, so the C
// channels of one voxel are adjacent (LibTorch's ChannelsLast3d). Statistics
// are float32 per (sample, group); gamma, beta, dgamma and dbeta are float32 [C].
//
// Forward, for sample n, group g = c / (C / G) and S = D * H * W voxels:
//   mean[n, g], rstd[n, g] = 1 / sqrt(var[n, g] + eps)   (biased variance over S * C / G values)
//   scale = rstd * gamma[c],  shift = fmaf(-mean, scale, beta[c])
//   z = fmaf(x, scale, shift),  y = bf16(z < 0 ? 0 : z)   (NaN stays NaN, as in torch.relu)
// Backward recomputes z with the same float operations, so its ReLU mask
// (z > 0) is the forward's, and returns
//   dbeta[c]  = sum over n, voxels of dz,  dz = z > 0 ? dy : 0
//   dgamma[c] = sum over n, voxels of dz * (x - mean) * rstd
//   dx = rstd * (gamma * dz - mean_g(gamma * dz) - xhat * mean_g(gamma * dz * xhat)),
// where mean_g averages over the S * C / G values of the group and
// xhat = (x - mean) * rstd.
//
// Every launcher is asynchronous on `stream` and throws std::runtime_error when
// a launch fails. Pointers to activations must be 16-byte aligned (one
// 16-byte load moves 8 channels), and `workspace` must hold the plan's bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace scaffold::cuda {

struct GroupNormReluShape {
  std::int64_t batch = 0;     // N
  std::int64_t spatial = 0;   // D * H * W
  std::int64_t channels = 0;  // C
  std::int64_t groups = 0;    // G
};

// Largest channel count the kernels take: one block reduces a full voxel row
// of C / 8 16-byte vectors, and 2048 channels keep that row within 256 threads.
inline constexpr std::int64_t kGroupNormReluMaxChannels = 2048;

// Returns why the kernels cannot take `shape`, or an empty string when they can.
// Requirements: N in [1, 65535], S >= 1, 8 <= C <= 2048, G >= 1, C divisible
// by G, and C / G divisible by 8 (a 16-byte vector never straddles two groups).
std::string group_norm_relu_unsupported_reason(const GroupNormReluShape& shape);

// Launch geometry shared by the forward and backward launchers. The
// reductions split every sample's voxels into `chunks` ranges of
// `rows_per_chunk` voxels so that even N * G = 8 groups fill the GPU.
struct GroupNormReluPlan {
  GroupNormReluShape shape;
  int threads_per_block = 0;   // a multiple of C / 8
  std::int64_t chunks = 0;
  std::int64_t rows_per_chunk = 0;
  std::int64_t elementwise_blocks = 0;  // per sample, for the elementwise kernels
  std::size_t forward_workspace_bytes = 0;
  std::size_t backward_workspace_bytes = 0;
};

// Plans the launches for a GPU with `multiprocessor_count` SMs (132 on an
// H200). Throws std::invalid_argument with the reason when the shape is
// unsupported.
GroupNormReluPlan plan_group_norm_relu(const GroupNormReluShape& shape, int multiprocessor_count);

// Writes y [N, S, C] bf16 and mean, rstd [N, G] float32.
void group_norm_relu_forward(const GroupNormReluPlan& plan, const __nv_bfloat16* x, const float* gamma,
                             const float* beta, float eps, __nv_bfloat16* y, float* mean, float* rstd,
                             void* workspace, cudaStream_t stream);

// Writes dx [N, S, C] bf16 and dgamma, dbeta [C] float32 from the forward's
// input x and its saved mean and rstd.
void group_norm_relu_backward(const GroupNormReluPlan& plan, const __nv_bfloat16* dy, const __nv_bfloat16* x,
                              const float* gamma, const float* beta, const float* mean, const float* rstd,
                              __nv_bfloat16* dx, float* dgamma, float* dbeta, void* workspace,
                              cudaStream_t stream);

}  // namespace scaffold::cuda
