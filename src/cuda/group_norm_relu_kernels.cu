// Kernels of the fused GroupNorm + ReLU. The formulas are in the header.
//
// Every kernel reads activations as 16-byte vectors of 8 bf16 channels. A
// block has a multiple of C / 8 threads, so thread t always handles channel
// vector cv = t % (C / 8), and every grid-stride step keeps that vector: the
// per-channel constants (scale, shift, group) stay in registers.
//
// Forward:  stats (partial sums per chunk) -> finalize (mean, rstd, scale,
//           shift) -> normalize (y = relu(z)).
// Backward: reduce (per-channel partial sums of dz and dz * (x - mean)) ->
//           channel totals (dgamma, dbeta) -> group coefficients -> dx.
// Partial sums go to the workspace and are added in a fixed order, so results
// do not depend on scheduling (no atomics).
#include "cuda/group_norm_relu_kernels.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "cuda/cuda_check.hpp"
#include "cuda/nvtx.hpp"

namespace scaffold::cuda {

namespace {

constexpr int kVectorChannels = 8;  // bf16 values in one 16-byte vector
constexpr int kTargetThreads = 256;
constexpr int kMaxThreads = 256;    // C <= 2048, so a voxel row is at most 256 vectors
constexpr int kUnroll = 4;          // independent 16-byte loads in flight per thread and operand
constexpr int kMaxThreadsPerMultiprocessor = 2048;  // compute capability 8.0 to 9.0
constexpr int kWarp = 32;
constexpr std::size_t kWorkspaceAlignment = 256;

// Kernel arguments derived from the plan.
struct Geometry {
  std::int64_t batch;
  std::int64_t spatial;
  std::int64_t channels;
  std::int64_t groups;
  int vectors_per_row;    // C / 8
  int vectors_per_group;  // (C / G) / 8
  int rows_per_block;     // threads / (C / 8)
  std::int64_t chunks;
  std::int64_t rows_per_chunk;
};

Geometry geometry_of(const GroupNormReluPlan& plan) {
  const GroupNormReluShape& s = plan.shape;
  const int vectors_per_row = static_cast<int>(s.channels / kVectorChannels);
  return Geometry{s.batch,
                  s.spatial,
                  s.channels,
                  s.groups,
                  vectors_per_row,
                  static_cast<int>(s.channels / s.groups / kVectorChannels),
                  plan.threads_per_block / vectors_per_row,
                  plan.chunks,
                  plan.rows_per_chunk};
}

std::size_t align_up(std::size_t bytes) { return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; }

// Carves float arrays out of the workspace, each aligned to 256 bytes.
class WorkspaceCursor {
 public:
  explicit WorkspaceCursor(void* base) : base_(static_cast<char*>(base)) {}

  float* take(std::int64_t count) {
    float* result = reinterpret_cast<float*>(base_ + offset_);
    offset_ += align_up(static_cast<std::size_t>(count) * sizeof(float));
    return result;
  }

  std::size_t bytes() const { return offset_; }

 private:
  char* base_;
  std::size_t offset_ = 0;
};

struct ForwardWorkspace {
  float* partial_sum;     // [N, G, chunks] sums of (x - shift)
  float* partial_sum_sq;  // [N, G, chunks] sums of (x - shift)^2
  float* scale;           // [N, C]
  float* shift;           // [N, C]
};

ForwardWorkspace carve_forward(WorkspaceCursor& cursor, const GroupNormReluShape& s, std::int64_t chunks) {
  ForwardWorkspace w{};
  w.partial_sum = cursor.take(s.batch * s.groups * chunks);
  w.partial_sum_sq = cursor.take(s.batch * s.groups * chunks);
  w.scale = cursor.take(s.batch * s.channels);
  w.shift = cursor.take(s.batch * s.channels);
  return w;
}

struct BackwardWorkspace {
  float* partial_dz;     // [N, chunks, C] sums of dz
  float* partial_dz_xc;  // [N, chunks, C] sums of dz * (x - mean)
  float* sum_dz;         // [N, C]
  float* sum_dz_xc;      // [N, C]
  float* coef_x;         // [N, G]
  float* coef_const;     // [N, G]
};

BackwardWorkspace carve_backward(WorkspaceCursor& cursor, const GroupNormReluShape& s, std::int64_t chunks) {
  BackwardWorkspace w{};
  w.partial_dz = cursor.take(s.batch * chunks * s.channels);
  w.partial_dz_xc = cursor.take(s.batch * chunks * s.channels);
  w.sum_dz = cursor.take(s.batch * s.channels);
  w.sum_dz_xc = cursor.take(s.batch * s.channels);
  w.coef_x = cursor.take(s.batch * s.groups);
  w.coef_const = cursor.take(s.batch * s.groups);
  return w;
}

__device__ __forceinline__ void unpack(const uint4& raw, float (&out)[kVectorChannels]) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVectorChannels / 2; ++i) {
    const float2 pair = __bfloat1622float2(pairs[i]);
    out[2 * i] = pair.x;
    out[2 * i + 1] = pair.y;
  }
}

__device__ __forceinline__ uint4 pack(const float (&values)[kVectorChannels]) {
  uint4 raw;
  auto* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVectorChannels / 2; ++i) {
    pairs[i] = __floats2bfloat162_rn(values[2 * i], values[2 * i + 1]);
  }
  return raw;
}

// The affine constants of one channel. Forward and backward share them, so
// both compute bit-identical z.
__device__ __forceinline__ float channel_scale(float rstd, float gamma) { return rstd * gamma; }
__device__ __forceinline__ float channel_shift(float mean, float scale, float beta) { return fmaf(-mean, scale, beta); }

// max(z, 0) that keeps NaN, as torch.relu does, so a diverging run still
// shows NaN in its loss. The backward mask z > 0 is false for NaN, matching
// torch's threshold_backward.
__device__ __forceinline__ float relu(float z) { return z < 0.0f ? 0.0f : z; }

// Index of the first bf16 of group `group` in sample n, the value that the
// statistics subtract before squaring (see group_stats_kernel).
__device__ __forceinline__ std::int64_t shift_index(const Geometry& g, std::int64_t n, int group) {
  return n * g.spatial * g.channels + static_cast<std::int64_t>(group) * g.vectors_per_group * kVectorChannels;
}

// grid (chunks, N), block threads_per_block. Sums (x - K) and (x - K)^2 over
// the chunk's voxels for every group, where K is the group's first value in
// the sample. Subtracting K keeps the single-pass variance accurate when the
// mean is large compared with the spread.
__global__ void __launch_bounds__(kMaxThreads)
    group_stats_kernel(const uint4* __restrict__ x, const __nv_bfloat16* __restrict__ x_values, Geometry g,
                       float* __restrict__ partial_sum, float* __restrict__ partial_sum_sq) {
  __shared__ float shared_sum[kMaxThreads];
  __shared__ float shared_sum_sq[kMaxThreads];

  const int vector = threadIdx.x % g.vectors_per_row;
  const int row_lane = threadIdx.x / g.vectors_per_row;
  const int group = vector / g.vectors_per_group;
  const std::int64_t n = blockIdx.y;
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t row_begin = chunk * g.rows_per_chunk;
  const std::int64_t row_end = min(g.spatial, row_begin + g.rows_per_chunk);
  const float shift = __bfloat162float(x_values[shift_index(g, n, group)]);
  const uint4* sample = x + n * g.spatial * g.vectors_per_row + vector;

  float sum = 0.0f;
  float sum_sq = 0.0f;
  for (std::int64_t row = row_begin + row_lane; row < row_end; row += kUnroll * g.rows_per_block) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t r = row + u * g.rows_per_block;
      raw[u] = r < row_end ? __ldg(sample + r * g.vectors_per_row) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (row + u * g.rows_per_block < row_end) {
        float values[kVectorChannels];
        unpack(raw[u], values);
#pragma unroll
        for (int k = 0; k < kVectorChannels; ++k) {
          const float d = values[k] - shift;
          sum += d;
          sum_sq = fmaf(d, d, sum_sq);
        }
      }
    }
  }

  // Fold the block's rows into row 0, then the vectors of each group.
  shared_sum[threadIdx.x] = sum;
  shared_sum_sq[threadIdx.x] = sum_sq;
  __syncthreads();
  if (row_lane == 0) {
    for (int r = 1; r < g.rows_per_block; ++r) {
      sum += shared_sum[r * g.vectors_per_row + vector];
      sum_sq += shared_sum_sq[r * g.vectors_per_row + vector];
    }
    shared_sum[vector] = sum;
    shared_sum_sq[vector] = sum_sq;
  }
  __syncthreads();
  if (row_lane == 0 && vector % g.vectors_per_group == 0) {
    float group_sum = 0.0f;
    float group_sum_sq = 0.0f;
    for (int i = 0; i < g.vectors_per_group; ++i) {
      group_sum += shared_sum[vector + i];
      group_sum_sq += shared_sum_sq[vector + i];
    }
    const std::int64_t slot = (n * g.groups + group) * g.chunks + chunk;
    partial_sum[slot] = group_sum;
    partial_sum_sq[slot] = group_sum_sq;
  }
}

__device__ __forceinline__ double warp_sum(double value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// One warp per (n, g): adds the chunk partials in double, writes mean and
// rstd, then the scale and shift of the group's channels.
__global__ void group_stats_finalize_kernel(const __nv_bfloat16* __restrict__ x_values, Geometry g,
                                            const float* __restrict__ partial_sum,
                                            const float* __restrict__ partial_sum_sq, const float* __restrict__ gamma,
                                            const float* __restrict__ beta, float eps, float* __restrict__ mean_out,
                                            float* __restrict__ rstd_out, float* __restrict__ scale_out,
                                            float* __restrict__ shift_out) {
  const std::int64_t slot = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (slot >= g.batch * g.groups) {
    return;
  }
  const std::int64_t n = slot / g.groups;
  const int group = static_cast<int>(slot % g.groups);

  double sum = 0.0;
  double sum_sq = 0.0;
  for (std::int64_t k = lane; k < g.chunks; k += kWarp) {
    sum += partial_sum[slot * g.chunks + k];
    sum_sq += partial_sum_sq[slot * g.chunks + k];
  }
  sum = __shfl_sync(0xffffffffu, warp_sum(sum), 0);
  sum_sq = __shfl_sync(0xffffffffu, warp_sum(sum_sq), 0);

  const int channels_per_group = g.vectors_per_group * kVectorChannels;
  const double count = static_cast<double>(g.spatial) * channels_per_group;
  const double shifted_mean = sum / count;
  // Clamps rounding below zero but keeps NaN, so a NaN input gives NaN statistics.
  const double raw_variance = sum_sq / count - shifted_mean * shifted_mean;
  const double variance = raw_variance < 0.0 ? 0.0 : raw_variance;
  const float mean = static_cast<float>(__bfloat162float(x_values[shift_index(g, n, group)]) + shifted_mean);
  const float rstd = static_cast<float>(1.0 / sqrt(variance + static_cast<double>(eps)));
  if (lane == 0) {
    mean_out[slot] = mean;
    rstd_out[slot] = rstd;
  }
  for (int i = lane; i < channels_per_group; i += kWarp) {
    const std::int64_t c = static_cast<std::int64_t>(group) * channels_per_group + i;
    const float scale = channel_scale(rstd, gamma[c]);
    scale_out[n * g.channels + c] = scale;
    shift_out[n * g.channels + c] = channel_shift(mean, scale, beta[c]);
  }
}

// grid (elementwise_blocks, N): y = bf16(relu(fmaf(x, scale, shift))).
__global__ void __launch_bounds__(kMaxThreads)
    normalize_relu_kernel(const uint4* __restrict__ x, Geometry g, const float* __restrict__ scale_in,
                          const float* __restrict__ shift_in, uint4* __restrict__ y) {
  const std::int64_t n = blockIdx.y;
  const int vector = threadIdx.x % g.vectors_per_row;
  float scale[kVectorChannels];
  float shift[kVectorChannels];
#pragma unroll
  for (int k = 0; k < kVectorChannels; ++k) {
    const std::int64_t c = n * g.channels + vector * kVectorChannels + k;
    scale[k] = scale_in[c];
    shift[k] = shift_in[c];
  }

  const std::int64_t per_sample = g.spatial * g.vectors_per_row;
  const uint4* source = x + n * per_sample;
  uint4* target = y + n * per_sample;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_sample;
       i += kUnroll * stride) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t j = i + u * stride;
      raw[u] = j < per_sample ? __ldg(source + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t j = i + u * stride;
      if (j < per_sample) {
        float values[kVectorChannels];
        unpack(raw[u], values);
#pragma unroll
        for (int k = 0; k < kVectorChannels; ++k) {
          values[k] = relu(fmaf(values[k], scale[k], shift[k]));
        }
        target[j] = pack(values);
      }
    }
  }
}

// Loads the per-channel constants of one thread's vector for the backward
// kernels: the forward's scale and shift recomputed from mean, rstd, gamma, beta.
struct VectorConstants {
  float scale[kVectorChannels];
  float shift[kVectorChannels];
  float mean;
  int group;
};

__device__ __forceinline__ VectorConstants load_constants(const Geometry& g, std::int64_t n, int vector,
                                                          const float* __restrict__ gamma,
                                                          const float* __restrict__ beta,
                                                          const float* __restrict__ mean,
                                                          const float* __restrict__ rstd) {
  VectorConstants constants;
  constants.group = vector / g.vectors_per_group;
  constants.mean = mean[n * g.groups + constants.group];
  const float r = rstd[n * g.groups + constants.group];
#pragma unroll
  for (int k = 0; k < kVectorChannels; ++k) {
    const int c = vector * kVectorChannels + k;
    constants.scale[k] = channel_scale(r, gamma[c]);
    constants.shift[k] = channel_shift(constants.mean, constants.scale[k], beta[c]);
  }
  return constants;
}

// grid (chunks, N): per-channel sums of dz and dz * (x - mean) over the
// chunk's voxels, written to partial_dz / partial_dz_xc [N, chunks, C].
__global__ void __launch_bounds__(kMaxThreads)
    backward_reduce_kernel(const uint4* __restrict__ dy, const uint4* __restrict__ x, Geometry g,
                           const float* __restrict__ gamma, const float* __restrict__ beta,
                           const float* __restrict__ mean, const float* __restrict__ rstd,
                           float* __restrict__ partial_dz, float* __restrict__ partial_dz_xc) {
  // [rows_per_block, C] each; rows_per_block * C = threads * 8 <= 2048.
  __shared__ __align__(16) float shared_dz[kMaxThreads * kVectorChannels];
  __shared__ __align__(16) float shared_dz_xc[kMaxThreads * kVectorChannels];

  const int vector = threadIdx.x % g.vectors_per_row;
  const int row_lane = threadIdx.x / g.vectors_per_row;
  const std::int64_t n = blockIdx.y;
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t row_begin = chunk * g.rows_per_chunk;
  const std::int64_t row_end = min(g.spatial, row_begin + g.rows_per_chunk);
  const VectorConstants constants = load_constants(g, n, vector, gamma, beta, mean, rstd);
  const std::int64_t sample_offset = n * g.spatial * g.vectors_per_row + vector;

  float sum_dz[kVectorChannels] = {};
  float sum_dz_xc[kVectorChannels] = {};
  for (std::int64_t row = row_begin + row_lane; row < row_end; row += kUnroll * g.rows_per_block) {
    uint4 raw_x[kUnroll];
    uint4 raw_dy[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t r = row + u * g.rows_per_block;
      const bool inside = r < row_end;
      raw_x[u] = inside ? __ldg(x + sample_offset + r * g.vectors_per_row) : make_uint4(0, 0, 0, 0);
      raw_dy[u] = inside ? __ldg(dy + sample_offset + r * g.vectors_per_row) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (row + u * g.rows_per_block < row_end) {
        float xs[kVectorChannels];
        float dys[kVectorChannels];
        unpack(raw_x[u], xs);
        unpack(raw_dy[u], dys);
#pragma unroll
        for (int k = 0; k < kVectorChannels; ++k) {
          const float z = fmaf(xs[k], constants.scale[k], constants.shift[k]);
          const float dz = z > 0.0f ? dys[k] : 0.0f;
          sum_dz[k] += dz;
          sum_dz_xc[k] = fmaf(dz, xs[k] - constants.mean, sum_dz_xc[k]);
        }
      }
    }
  }

  // Thread t = row_lane * (C / 8) + vector owns [row_lane, vector * 8 .. + 8),
  // which starts at element 8 * t of the row-major [rows, C] arrays.
  auto* dz_slot = reinterpret_cast<float4*>(shared_dz + kVectorChannels * threadIdx.x);
  auto* dz_xc_slot = reinterpret_cast<float4*>(shared_dz_xc + kVectorChannels * threadIdx.x);
  dz_slot[0] = make_float4(sum_dz[0], sum_dz[1], sum_dz[2], sum_dz[3]);
  dz_slot[1] = make_float4(sum_dz[4], sum_dz[5], sum_dz[6], sum_dz[7]);
  dz_xc_slot[0] = make_float4(sum_dz_xc[0], sum_dz_xc[1], sum_dz_xc[2], sum_dz_xc[3]);
  dz_xc_slot[1] = make_float4(sum_dz_xc[4], sum_dz_xc[5], sum_dz_xc[6], sum_dz_xc[7]);
  __syncthreads();

  for (std::int64_t c = threadIdx.x; c < g.channels; c += blockDim.x) {
    float total_dz = 0.0f;
    float total_dz_xc = 0.0f;
    for (int r = 0; r < g.rows_per_block; ++r) {
      total_dz += shared_dz[r * g.channels + c];
      total_dz_xc += shared_dz_xc[r * g.channels + c];
    }
    const std::int64_t slot = (n * g.chunks + chunk) * g.channels + c;
    partial_dz[slot] = total_dz;
    partial_dz_xc[slot] = total_dz_xc;
  }
}

constexpr int kChannelTile = 32;   // channels per block in backward_channel_totals_kernel
constexpr int kChunkStripes = 16;  // chunk stripes per block in that kernel

// grid ceil(C / 32), block (32, 16): adds the chunk partials of each (n, c) in
// double, stores the per-sample totals and writes dbeta and dgamma.
__global__ void backward_channel_totals_kernel(Geometry g, const float* __restrict__ rstd,
                                               const float* __restrict__ partial_dz,
                                               const float* __restrict__ partial_dz_xc, float* __restrict__ sum_dz,
                                               float* __restrict__ sum_dz_xc, float* __restrict__ dgamma,
                                               float* __restrict__ dbeta) {
  __shared__ double shared_dz[kChunkStripes][kChannelTile];
  __shared__ double shared_dz_xc[kChunkStripes][kChannelTile];

  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kChannelTile + threadIdx.x;
  const bool active = c < g.channels;
  const int channels_per_group = g.vectors_per_group * kVectorChannels;
  double dbeta_total = 0.0;
  double dgamma_total = 0.0;
  for (std::int64_t n = 0; n < g.batch; ++n) {
    double dz = 0.0;
    double dz_xc = 0.0;
    if (active) {
      for (std::int64_t k = threadIdx.y; k < g.chunks; k += kChunkStripes) {
        const std::int64_t slot = (n * g.chunks + k) * g.channels + c;
        dz += partial_dz[slot];
        dz_xc += partial_dz_xc[slot];
      }
    }
    shared_dz[threadIdx.y][threadIdx.x] = dz;
    shared_dz_xc[threadIdx.y][threadIdx.x] = dz_xc;
    __syncthreads();
    if (threadIdx.y == 0 && active) {
      for (int stripe = 1; stripe < kChunkStripes; ++stripe) {
        dz += shared_dz[stripe][threadIdx.x];
        dz_xc += shared_dz_xc[stripe][threadIdx.x];
      }
      sum_dz[n * g.channels + c] = static_cast<float>(dz);
      sum_dz_xc[n * g.channels + c] = static_cast<float>(dz_xc);
      dbeta_total += dz;
      dgamma_total += dz_xc * rstd[n * g.groups + c / channels_per_group];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && active) {
    dbeta[c] = static_cast<float>(dbeta_total);
    dgamma[c] = static_cast<float>(dgamma_total);
  }
}

// One thread per (n, g): dx = rstd * gamma * dz + coef_x * x + coef_const with
//   coef_x     = -rstd^3 * sum_g(gamma * dz * (x - mean)) / M
//   coef_const = -rstd * sum_g(gamma * dz) / M - mean * coef_x,   M = S * C / G.
__global__ void backward_group_coefficients_kernel(Geometry g, const float* __restrict__ gamma,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   const float* __restrict__ sum_dz,
                                                   const float* __restrict__ sum_dz_xc, float* __restrict__ coef_x,
                                                   float* __restrict__ coef_const) {
  const std::int64_t slot = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slot >= g.batch * g.groups) {
    return;
  }
  const std::int64_t n = slot / g.groups;
  const std::int64_t group = slot % g.groups;
  const int channels_per_group = g.vectors_per_group * kVectorChannels;

  double gamma_dz = 0.0;
  double gamma_dz_xc = 0.0;
  for (int i = 0; i < channels_per_group; ++i) {
    const std::int64_t c = group * channels_per_group + i;
    gamma_dz += static_cast<double>(gamma[c]) * sum_dz[n * g.channels + c];
    gamma_dz_xc += static_cast<double>(gamma[c]) * sum_dz_xc[n * g.channels + c];
  }
  const double count = static_cast<double>(g.spatial) * channels_per_group;
  const double r = rstd[slot];
  const double x_coefficient = -r * r * r * gamma_dz_xc / count;
  coef_x[slot] = static_cast<float>(x_coefficient);
  coef_const[slot] = static_cast<float>(-r * gamma_dz / count - static_cast<double>(mean[slot]) * x_coefficient);
}

// grid (elementwise_blocks, N): dx = fmaf(scale, dz, fmaf(coef_x, x, coef_const)).
__global__ void __launch_bounds__(kMaxThreads)
    backward_dx_kernel(const uint4* __restrict__ dy, const uint4* __restrict__ x, Geometry g,
                       const float* __restrict__ gamma, const float* __restrict__ beta,
                       const float* __restrict__ mean, const float* __restrict__ rstd,
                       const float* __restrict__ coef_x_in, const float* __restrict__ coef_const_in,
                       uint4* __restrict__ dx) {
  const std::int64_t n = blockIdx.y;
  const int vector = threadIdx.x % g.vectors_per_row;
  const VectorConstants constants = load_constants(g, n, vector, gamma, beta, mean, rstd);
  const float coef_x = coef_x_in[n * g.groups + constants.group];
  const float coef_const = coef_const_in[n * g.groups + constants.group];

  const std::int64_t per_sample = g.spatial * g.vectors_per_row;
  const uint4* x_sample = x + n * per_sample;
  const uint4* dy_sample = dy + n * per_sample;
  uint4* dx_sample = dx + n * per_sample;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_sample;
       i += kUnroll * stride) {
    uint4 raw_x[kUnroll];
    uint4 raw_dy[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t j = i + u * stride;
      const bool inside = j < per_sample;
      raw_x[u] = inside ? __ldg(x_sample + j) : make_uint4(0, 0, 0, 0);
      raw_dy[u] = inside ? __ldg(dy_sample + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t j = i + u * stride;
      if (j < per_sample) {
        float xs[kVectorChannels];
        float dys[kVectorChannels];
        unpack(raw_x[u], xs);
        unpack(raw_dy[u], dys);
        float result[kVectorChannels];
#pragma unroll
        for (int k = 0; k < kVectorChannels; ++k) {
          const float z = fmaf(xs[k], constants.scale[k], constants.shift[k]);
          const float dz = z > 0.0f ? dys[k] : 0.0f;
          result[k] = fmaf(constants.scale[k], dz, fmaf(coef_x, xs[k], coef_const));
        }
        dx_sample[j] = pack(result);
      }
    }
  }
}

void check_aligned(const void* pointer, const char* name) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % 16 != 0) {
    throw std::invalid_argument(std::string("group_norm_relu: ") + name +
                                " must be 16-byte aligned for vector loads; pass a contiguous tensor that "
                                "starts at its allocation");
  }
}

void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw_cuda_error(status, kernel, __FILE__, __LINE__);
  }
}

int ceil_div_int(std::int64_t a, std::int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace

std::string group_norm_relu_unsupported_reason(const GroupNormReluShape& shape) {
  const auto describe = [&shape] {
    return " (N=" + std::to_string(shape.batch) + ", S=" + std::to_string(shape.spatial) +
           ", C=" + std::to_string(shape.channels) + ", G=" + std::to_string(shape.groups) + ")";
  };
  if (shape.batch < 1 || shape.batch > 65535) {
    return "batch size must be in [1, 65535]" + describe();
  }
  if (shape.spatial < 1) {
    return "the volume must have at least one voxel" + describe();
  }
  if (shape.channels < kVectorChannels || shape.channels > kGroupNormReluMaxChannels) {
    return "channel count must be in [8, " + std::to_string(kGroupNormReluMaxChannels) + "]" + describe();
  }
  if (shape.groups < 1 || shape.channels % shape.groups != 0) {
    return "group count must divide the channel count" + describe();
  }
  if ((shape.channels / shape.groups) % kVectorChannels != 0) {
    return "channels per group must be a multiple of 8" + describe();
  }
  return {};
}

GroupNormReluPlan plan_group_norm_relu(const GroupNormReluShape& shape, int multiprocessor_count) {
  const std::string reason = group_norm_relu_unsupported_reason(shape);
  if (!reason.empty()) {
    throw std::invalid_argument("group_norm_relu: unsupported shape: " + reason);
  }

  GroupNormReluPlan plan;
  plan.shape = shape;
  const std::int64_t vectors_per_row = shape.channels / kVectorChannels;
  const std::int64_t rows_per_block = std::max<std::int64_t>(1, kTargetThreads / vectors_per_row);
  plan.threads_per_block = static_cast<int>(vectors_per_row * rows_per_block);

  // Enough blocks for every SM to hold a full complement of threads, shared
  // over the batch; a chunk covers at least one pass of the block's rows.
  const std::int64_t blocks_per_multiprocessor = kMaxThreadsPerMultiprocessor / plan.threads_per_block;
  const std::int64_t target_blocks = std::max(1, multiprocessor_count) * blocks_per_multiprocessor;
  const std::int64_t blocks_per_sample = std::max<std::int64_t>(1, (target_blocks + shape.batch - 1) / shape.batch);
  const std::int64_t max_chunks = (shape.spatial + rows_per_block - 1) / rows_per_block;
  const std::int64_t chunks = std::clamp<std::int64_t>(blocks_per_sample, 1, max_chunks);
  plan.rows_per_chunk = (shape.spatial + chunks - 1) / chunks;
  plan.chunks = (shape.spatial + plan.rows_per_chunk - 1) / plan.rows_per_chunk;

  // The elementwise kernels loop over the sample; two waves of blocks.
  const std::int64_t vectors_per_sample = shape.spatial * vectors_per_row;
  const std::int64_t needed_blocks = (vectors_per_sample + plan.threads_per_block - 1) / plan.threads_per_block;
  plan.elementwise_blocks = std::clamp<std::int64_t>(needed_blocks, 1, 2 * blocks_per_sample);

  WorkspaceCursor forward_cursor(nullptr);
  carve_forward(forward_cursor, shape, plan.chunks);
  plan.forward_workspace_bytes = forward_cursor.bytes();
  WorkspaceCursor backward_cursor(nullptr);
  carve_backward(backward_cursor, shape, plan.chunks);
  plan.backward_workspace_bytes = backward_cursor.bytes();
  return plan;
}

void group_norm_relu_forward(const GroupNormReluPlan& plan, const __nv_bfloat16* x, const float* gamma,
                             const float* beta, float eps, __nv_bfloat16* y, float* mean, float* rstd,
                             void* workspace, cudaStream_t stream) {
  NvtxRange range("group_norm_relu_forward");
  check_aligned(x, "x");
  check_aligned(y, "y");
  const Geometry g = geometry_of(plan);
  WorkspaceCursor cursor(workspace);
  const ForwardWorkspace w = carve_forward(cursor, plan.shape, plan.chunks);
  const auto* x_vectors = reinterpret_cast<const uint4*>(x);

  const dim3 reduce_grid(static_cast<unsigned>(plan.chunks), static_cast<unsigned>(g.batch));
  group_stats_kernel<<<reduce_grid, plan.threads_per_block, 0, stream>>>(x_vectors, x, g, w.partial_sum,
                                                                          w.partial_sum_sq);
  check_launch("group_stats_kernel");

  constexpr int kFinalizeThreads = 256;
  const int finalize_blocks = ceil_div_int(g.batch * g.groups, kFinalizeThreads / kWarp);
  group_stats_finalize_kernel<<<finalize_blocks, kFinalizeThreads, 0, stream>>>(
      x, g, w.partial_sum, w.partial_sum_sq, gamma, beta, eps, mean, rstd, w.scale, w.shift);
  check_launch("group_stats_finalize_kernel");

  const dim3 elementwise_grid(static_cast<unsigned>(plan.elementwise_blocks), static_cast<unsigned>(g.batch));
  normalize_relu_kernel<<<elementwise_grid, plan.threads_per_block, 0, stream>>>(
      x_vectors, g, w.scale, w.shift, reinterpret_cast<uint4*>(y));
  check_launch("normalize_relu_kernel");
}

void group_norm_relu_backward(const GroupNormReluPlan& plan, const __nv_bfloat16* dy, const __nv_bfloat16* x,
                              const float* gamma, const float* beta, const float* mean, const float* rstd,
                              __nv_bfloat16* dx, float* dgamma, float* dbeta, void* workspace,
                              cudaStream_t stream) {
  NvtxRange range("group_norm_relu_backward");
  check_aligned(dy, "dy");
  check_aligned(x, "x");
  check_aligned(dx, "dx");
  const Geometry g = geometry_of(plan);
  WorkspaceCursor cursor(workspace);
  const BackwardWorkspace w = carve_backward(cursor, plan.shape, plan.chunks);
  const auto* dy_vectors = reinterpret_cast<const uint4*>(dy);
  const auto* x_vectors = reinterpret_cast<const uint4*>(x);

  const dim3 reduce_grid(static_cast<unsigned>(plan.chunks), static_cast<unsigned>(g.batch));
  backward_reduce_kernel<<<reduce_grid, plan.threads_per_block, 0, stream>>>(
      dy_vectors, x_vectors, g, gamma, beta, mean, rstd, w.partial_dz, w.partial_dz_xc);
  check_launch("backward_reduce_kernel");

  const dim3 totals_block(kChannelTile, kChunkStripes);
  backward_channel_totals_kernel<<<ceil_div_int(g.channels, kChannelTile), totals_block, 0, stream>>>(
      g, rstd, w.partial_dz, w.partial_dz_xc, w.sum_dz, w.sum_dz_xc, dgamma, dbeta);
  check_launch("backward_channel_totals_kernel");

  constexpr int kCoefficientThreads = 128;
  backward_group_coefficients_kernel<<<ceil_div_int(g.batch * g.groups, kCoefficientThreads), kCoefficientThreads,
                                       0, stream>>>(g, gamma, mean, rstd, w.sum_dz, w.sum_dz_xc, w.coef_x,
                                                    w.coef_const);
  check_launch("backward_group_coefficients_kernel");

  const dim3 elementwise_grid(static_cast<unsigned>(plan.elementwise_blocks), static_cast<unsigned>(g.batch));
  backward_dx_kernel<<<elementwise_grid, plan.threads_per_block, 0, stream>>>(
      dy_vectors, x_vectors, g, gamma, beta, mean, rstd, w.coef_x, w.coef_const, reinterpret_cast<uint4*>(dx));
  check_launch("backward_dx_kernel");
}

}  // namespace scaffold::cuda
