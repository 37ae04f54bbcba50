#include "nn/groupnorm_relu.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/autograd.h>

// Shapes: x, y, dy, dx are [N, C, *] float32, S the product of the spatial
// sizes, in one of two layouts: contiguous ([N, C, S] in memory) or
// channels-last ([N, S, C] in memory, such as ChannelsLast3d). Channel c
// belongs to group c / (C / G). Within one (n, group) block of
// M = (C / G) * S elements:
//
//   forward:   mu = mean(x), var = mean((x - mu)^2), r = 1 / sqrt(var + eps)
//              z = (x - mu) * r * gamma[c] + beta[c],  y = max(0, z)
//
//   backward:  g = dy * [z > 0], the ReLU gradient, zero at z == 0 as in
//              LibTorch's threshold_backward
//              dbeta[c]  = sum over n, s of g
//              dgamma[c] = sum over n, s of g * xhat, with xhat = (x - mu) * r
//              With h = dL/dxhat = gamma[c] * g, and, over the block,
//              d var / d x_i = 2 (x_i - mu) / M (the mu term cancels because
//              the deviations sum to 0), so d r / d x_i = -r^2 xhat_i / M and
//              d xhat_j / d x_i = r (delta_ij - 1/M) - r xhat_i xhat_j / M.
//              Summing h_j times that over j:
//                dx_i = r * (h_i - mean(h) - xhat_i * mean(h * xhat))
//              Per channel, A[n, c] = sum_s g and B[n, c] = sum_s g * (x - mu),
//              so sum(h) = sum_c gamma[c] A and sum(h xhat) = r sum_c gamma[c] B.
//
// Both layouts split the data into fixed chunks, reduce each chunk with float
// sums of at most 128 terms, and combine the chunks in float64 in a fixed
// order, so neither depends on the thread count. The contiguous kernels
// chunk each [n, c] plane and vectorise along it. The channels-last kernels
// chunk the voxels of each sample and vectorise across the C channels of a
// voxel, with per-channel constants. The two layouts sum in different orders,
// so their results agree to float32 rounding but not bit for bit.
//
// Forward makes two passes over x (moments, then normalise + ReLU) and one
// write of y. Backward recomputes the ReLU mask from x, so it needs x but not
// y, and makes two passes over x and dy (channel sums, then dx) and one write
// of dx.
//
// Saved for backward: x, weight and bias (references, no copies), and mean
// and rstd as [N, G] float64. LibTorch's GroupNorm + ReLU saves x and its
// statistics in GroupNorm and y in ReLU, so the fused operation saves one
// activation-sized tensor fewer. In the U-Net this alone frees nothing,
// because the layer after it (the next convolution or the max pool) saves y
// as its own input. What the fused backward does free is the masked gradient,
// one activation-sized temporary that ReLU's backward writes and GroupNorm's
// backward reads.

namespace scaffold {

namespace {

// Elements per work item. A chunk of x (16 KiB) stays in L1 between the two
// passes of chunk_moments, and planes longer than this are split so that
// batch 1 with few channels still spreads over all threads.
constexpr std::int64_t kChunkElements = 4096;

// Minimum elements per parallel_for task, so that tiny planes do not pay one
// task dispatch per chunk.
constexpr std::int64_t kMinTaskElements = 16384;

// Float accumulators per reduction. Lane l adds elements l, l + 32, l + 64,
// ... in this order, whatever the vector width of the running version, so the
// sums vectorise without reassociation and every version returns the same bits.
constexpr int kLanes = 32;

// Voxels per chunk of the channels-last kernels. Each channel of a chunk is
// summed in one float, so a float sum adds at most 128 values, as each lane
// of the contiguous kernels does. A chunk of 64 channels (32 KiB) stays in L1
// or L2 between the two passes of the moments.
constexpr std::int64_t kChannelsLastChunkVoxels = kChunkElements / kLanes;

// Tensor sizes that both layouts share.
struct NormShape {
  std::int64_t batch;
  std::int64_t channels;
  std::int64_t groups;
  std::int64_t channels_per_group;
  std::int64_t plane;  // S, elements per [n, c]

  std::int64_t group_elements() const { return channels_per_group * plane; }
};

NormShape norm_shape_of(const torch::Tensor& input, std::int64_t groups) {
  NormShape shape{};
  shape.batch = input.size(0);
  shape.channels = input.size(1);
  shape.groups = groups;
  shape.channels_per_group = shape.channels / groups;
  shape.plane = input.numel() / (shape.batch * shape.channels);
  return shape;
}

// Contiguous layout: tensor sizes and the split of each [n, c] plane into
// chunks.
struct Geometry : NormShape {
  std::int64_t chunk;              // elements per full chunk
  std::int64_t chunks_per_plane;

  std::int64_t items() const { return batch * channels * chunks_per_plane; }
  std::int64_t item_offset(std::int64_t item) const {
    return (item / chunks_per_plane) * plane + (item % chunks_per_plane) * chunk;
  }
  std::int64_t item_count(std::int64_t item) const {
    return std::min(chunk, plane - (item % chunks_per_plane) * chunk);
  }
  std::int64_t item_plane(std::int64_t item) const { return item / chunks_per_plane; }
  std::int64_t grain() const { return std::max<std::int64_t>(1, kMinTaskElements / chunk); }
};

Geometry geometry_of(const torch::Tensor& input, std::int64_t groups) {
  Geometry geometry{};
  static_cast<NormShape&>(geometry) = norm_shape_of(input, groups);
  geometry.chunk = std::min(geometry.plane, kChunkElements);
  geometry.chunks_per_plane = (geometry.plane + geometry.chunk - 1) / geometry.chunk;
  return geometry;
}

// Channels-last layout: element (n, c, s) at (n * S + s) * C + c. The S
// voxels of each sample are split into chunks of kChannelsLastChunkVoxels,
// and a work item is one (n, chunk).
struct ChannelsLastGeometry : NormShape {
  std::int64_t chunks_per_sample;

  std::int64_t items() const { return batch * chunks_per_sample; }
  std::int64_t item_sample(std::int64_t item) const { return item / chunks_per_sample; }
  // Offset in floats of the item's first element.
  std::int64_t item_offset(std::int64_t item) const {
    return (item_sample(item) * plane + (item % chunks_per_sample) * kChannelsLastChunkVoxels) * channels;
  }
  std::int64_t item_voxels(std::int64_t item) const {
    return std::min(kChannelsLastChunkVoxels, plane - (item % chunks_per_sample) * kChannelsLastChunkVoxels);
  }
  std::int64_t grain() const {
    return std::max<std::int64_t>(1, kMinTaskElements / (kChannelsLastChunkVoxels * channels));
  }
};

ChannelsLastGeometry channels_last_geometry_of(const torch::Tensor& input, std::int64_t groups) {
  ChannelsLastGeometry geometry{};
  static_cast<NormShape&>(geometry) = norm_shape_of(input, groups);
  geometry.chunks_per_sample = (geometry.plane + kChannelsLastChunkVoxels - 1) / kChannelsLastChunkVoxels;
  return geometry;
}

// True when input is [N, C, *] with C innermost and no gaps, so that element
// (n, c, s), s the row-major index over the spatial sizes, lies at
// (n * S + s) * C + c. Dimensions of size 1 may have any stride, as in
// is_contiguous(ChannelsLast3d), which this equals for 5-D inputs.
bool is_channels_last_dense(const torch::Tensor& input) {
  const std::int64_t channels = input.size(1);
  if (channels != 1 && input.stride(1) != 1) {
    return false;
  }
  std::int64_t expected_stride = channels;
  for (std::int64_t dim = input.dim() - 1; dim >= 2; --dim) {
    if (input.size(dim) != 1 && input.stride(dim) != expected_stride) {
      return false;
    }
    expected_stride *= input.size(dim);
  }
  return input.size(0) == 1 || input.stride(0) == expected_stride;
}

// Moments of one chunk: the sum, and the sum of squared deviations from
// `center`, a float close to the chunk mean.
struct ChunkMoments {
  double sum;
  double centered_squares;
  float center;
};

// Per-channel float constants of z = (x - mean) * scale + shift. Forward and
// backward derive them with this one function, so the ReLU mask recomputed in
// backward matches the forward output bit for bit.
struct ChannelAffine {
  float mean;
  float scale;
  float shift;
};

ChannelAffine channel_affine(double mean, double rstd, float gamma, float beta) {
  return {static_cast<float>(mean), static_cast<float>(rstd * static_cast<double>(gamma)), beta};
}

// Per-chunk sums of the backward pass: sum of g and sum of g * (x - mean),
// with mean the float mean of ChannelAffine.
struct GradientSums {
  double g;
  double g_centered;
};

// The hot loops come in an AVX-512, an AVX2 and a baseline x86-64 version,
// and GCC's function multiversioning picks one at load time from the CPU's
// features, because the project builds without -march flags. The reductions
// are templates over the vector width in floats, written with GCC vector
// types. The element-wise loops use target_clones and GCC's vectoriser. This
// file is compiled with -ffp-contract=off (src/CMakeLists.txt), so every
// version, vector loop and scalar tail rounds (x - mean) * scale + shift the
// same way. The three versions gave identical bits when each was forced on an
// AVX-512 CPU, but the tests only run the version the CPU selects.

template <int Width>
__attribute__((always_inline)) inline void chunk_moments_body(const float* x, std::int64_t count,
                                                              ChunkMoments* out) {
  typedef float Vector __attribute__((vector_size(Width * sizeof(float))));
  constexpr int kVectors = kLanes / Width;

  // Pass 1: sum. Each lane adds at most kChunkElements / kLanes = 128 floats,
  // and the lanes are added in float64.
  Vector sums[kVectors] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int k = 0; k < kVectors; ++k) {
      Vector values;
      std::memcpy(&values, x + i + k * Width, sizeof(values));
      sums[k] += values;
    }
  }
  const std::int64_t vector_end = i;
  double sum = 0.0;
  for (int lane = 0; lane < kLanes; ++lane) {
    sum += sums[lane / Width][lane % Width];
  }
  for (; i < count; ++i) {
    sum += x[i];
  }
  const float center = static_cast<float>(sum / static_cast<double>(count));

  // Pass 2, over the chunk still in L1: squared deviations from the chunk's
  // own mean, so a large mean does not cancel the variance away.
  const Vector centers = center - Vector{};
  Vector squares[kVectors] = {};
  for (i = 0; i < vector_end; i += kLanes) {
    for (int k = 0; k < kVectors; ++k) {
      Vector deviations;
      std::memcpy(&deviations, x + i + k * Width, sizeof(deviations));
      deviations -= centers;
      squares[k] += deviations * deviations;
    }
  }
  double square_sum = 0.0;
  for (int lane = 0; lane < kLanes; ++lane) {
    square_sum += squares[lane / Width][lane % Width];
  }
  for (; i < count; ++i) {
    const float deviation = x[i] - center;
    square_sum += deviation * deviation;
  }
  *out = {sum, square_sum, center};
}

__attribute__((target("default"))) void chunk_moments(const float* x, std::int64_t count, ChunkMoments* out) {
  chunk_moments_body<4>(x, count, out);
}
__attribute__((target("avx2"))) void chunk_moments(const float* x, std::int64_t count, ChunkMoments* out) {
  chunk_moments_body<8>(x, count, out);
}
__attribute__((target("avx512f"))) void chunk_moments(const float* x, std::int64_t count, ChunkMoments* out) {
  chunk_moments_body<16>(x, count, out);
}

template <int Width>
__attribute__((always_inline)) inline void chunk_gradient_sums_body(const float* x, const float* dy,
                                                                    std::int64_t count, ChannelAffine affine,
                                                                    GradientSums* out) {
  typedef float Vector __attribute__((vector_size(Width * sizeof(float))));
  constexpr int kVectors = kLanes / Width;

  const Vector zeros = {};
  const Vector means = affine.mean - zeros;
  const Vector scales = affine.scale - zeros;
  const Vector shifts = affine.shift - zeros;
  Vector g_sums[kVectors] = {};
  Vector g_centered_sums[kVectors] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int k = 0; k < kVectors; ++k) {
      Vector centered;
      Vector upstream;
      std::memcpy(&centered, x + i + k * Width, sizeof(centered));
      std::memcpy(&upstream, dy + i + k * Width, sizeof(upstream));
      centered -= means;
      const Vector z = centered * scales + shifts;
      const Vector g = z > zeros ? upstream : zeros;
      g_sums[k] += g;
      g_centered_sums[k] += g * centered;
    }
  }
  double g_sum = 0.0;
  double g_centered_sum = 0.0;
  for (int lane = 0; lane < kLanes; ++lane) {
    g_sum += g_sums[lane / Width][lane % Width];
    g_centered_sum += g_centered_sums[lane / Width][lane % Width];
  }
  for (; i < count; ++i) {
    const float centered = x[i] - affine.mean;
    const float z = centered * affine.scale + affine.shift;
    const float g = z > 0.0f ? dy[i] : 0.0f;
    g_sum += g;
    g_centered_sum += g * centered;
  }
  *out = {g_sum, g_centered_sum};
}

__attribute__((target("default"))) void chunk_gradient_sums(const float* x, const float* dy, std::int64_t count,
                                                            ChannelAffine affine, GradientSums* out) {
  chunk_gradient_sums_body<4>(x, dy, count, affine, out);
}
__attribute__((target("avx2"))) void chunk_gradient_sums(const float* x, const float* dy, std::int64_t count,
                                                         ChannelAffine affine, GradientSums* out) {
  chunk_gradient_sums_body<8>(x, dy, count, affine, out);
}
__attribute__((target("avx512f"))) void chunk_gradient_sums(const float* x, const float* dy, std::int64_t count,
                                                            ChannelAffine affine, GradientSums* out) {
  chunk_gradient_sums_body<16>(x, dy, count, affine, out);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void normalize_relu(const float* x, float* y,
                                                                                 std::int64_t count,
                                                                                 ChannelAffine affine) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float z = (x[i] - affine.mean) * affine.scale + affine.shift;
    // z < 0 ? 0 : z keeps NaN (like torch::relu) and compiles to one max.
    y[i] = z < 0.0f ? 0.0f : z;
  }
}

// dx = g_coefficient * g + centered_coefficient * (x - mean) + constant.
struct InputGradientCoefficients {
  float g_coefficient;
  float centered_coefficient;
  float constant;
};

__attribute__((target_clones("avx512f", "avx2", "default"))) void input_gradient(
    const float* x, const float* dy, float* dx, std::int64_t count, ChannelAffine affine,
    InputGradientCoefficients coefficients) {
  for (std::int64_t i = 0; i < count; ++i) {
    // dy is loaded whatever the mask, so the select needs no branch or
    // masked load and vectorises in the baseline version too.
    const float upstream = dy[i];
    const float centered = x[i] - affine.mean;
    const float z = centered * affine.scale + affine.shift;
    const float g = z > 0.0f ? upstream : 0.0f;
    dx[i] = coefficients.g_coefficient * g + coefficients.centered_coefficient * centered + coefficients.constant;
  }
}

// Channels-last kernels. x, dy, y and dx point at the first voxel of a chunk
// and are [voxels, channels] row-major. The per-channel arrays are [channels].
// The inner loops run across channels, so each channel's sum adds the voxels
// one after the other whatever the vector width, and every clone and the
// scalar epilogue give the same bits. The pointers are __restrict so that GCC
// vectorises without run-time alias checks.

// Fills sums[c] with the float sum of x[v, c] over the chunk's voxels.
__attribute__((target_clones("avx512f", "avx2", "default"))) void channel_sums(const float* __restrict x,
                                                                               std::int64_t voxels,
                                                                               std::int64_t channels,
                                                                               float* __restrict sums) {
  std::fill(sums, sums + channels, 0.0f);
  for (std::int64_t v = 0; v < voxels; ++v) {
    const float* row = x + v * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      sums[c] += row[c];
    }
  }
}

// Fills squares[c] with the float sum of (x[v, c] - centers[c])^2.
__attribute__((target_clones("avx512f", "avx2", "default"))) void channel_centered_squares(
    const float* __restrict x, std::int64_t voxels, std::int64_t channels, const float* __restrict centers,
    float* __restrict squares) {
  std::fill(squares, squares + channels, 0.0f);
  for (std::int64_t v = 0; v < voxels; ++v) {
    const float* row = x + v * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      const float deviation = row[c] - centers[c];
      squares[c] += deviation * deviation;
    }
  }
}

// Fills g_sums[c] and g_centered_sums[c] with the float sums of g and of
// g * (x - means[c]), g the masked gradient, as chunk_gradient_sums does.
__attribute__((target_clones("avx512f", "avx2", "default"))) void channel_gradient_sums(
    const float* __restrict x, const float* __restrict dy, std::int64_t voxels, std::int64_t channels,
    const float* __restrict means, const float* __restrict scales, const float* __restrict shifts,
    float* __restrict g_sums, float* __restrict g_centered_sums) {
  std::fill(g_sums, g_sums + channels, 0.0f);
  std::fill(g_centered_sums, g_centered_sums + channels, 0.0f);
  for (std::int64_t v = 0; v < voxels; ++v) {
    const float* x_row = x + v * channels;
    const float* dy_row = dy + v * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      const float upstream = dy_row[c];
      const float centered = x_row[c] - means[c];
      const float z = centered * scales[c] + shifts[c];
      const float g = z > 0.0f ? upstream : 0.0f;
      g_sums[c] += g;
      g_centered_sums[c] += g * centered;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void normalize_relu_channels_last(
    const float* __restrict x, float* __restrict y, std::int64_t voxels, std::int64_t channels,
    const float* __restrict means, const float* __restrict scales, const float* __restrict shifts) {
  for (std::int64_t v = 0; v < voxels; ++v) {
    const float* x_row = x + v * channels;
    float* y_row = y + v * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      const float z = (x_row[c] - means[c]) * scales[c] + shifts[c];
      y_row[c] = z < 0.0f ? 0.0f : z;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void input_gradient_channels_last(
    const float* __restrict x, const float* __restrict dy, float* __restrict dx, std::int64_t voxels,
    std::int64_t channels, const float* __restrict means, const float* __restrict scales,
    const float* __restrict shifts, const float* __restrict g_coefficients,
    const float* __restrict centered_coefficients, const float* __restrict constants) {
  for (std::int64_t v = 0; v < voxels; ++v) {
    const float* x_row = x + v * channels;
    const float* dy_row = dy + v * channels;
    float* dx_row = dx + v * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      const float upstream = dy_row[c];
      const float centered = x_row[c] - means[c];
      const float z = centered * scales[c] + shifts[c];
      const float g = z > 0.0f ? upstream : 0.0f;
      dx_row[c] = g_coefficients[c] * g + centered_coefficients[c] * centered + constants[c];
    }
  }
}

// Runs body(item) for every work item on LibTorch's intra-op threads. Each
// item writes only its own outputs, so the results do not depend on how
// parallel_for splits the range.
template <class AnyGeometry, class Body>
void for_each_item(const AnyGeometry& geometry, const Body& body) {
  at::parallel_for(0, geometry.items(), geometry.grain(), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t item = begin; item < end; ++item) {
      body(item);
    }
  });
}

std::vector<ChannelAffine> channel_affines(const NormShape& geometry, const double* mean, const double* rstd,
                                           const float* gamma, const float* beta) {
  std::vector<ChannelAffine> affines(geometry.batch * geometry.channels);
  for (std::int64_t n = 0; n < geometry.batch; ++n) {
    for (std::int64_t c = 0; c < geometry.channels; ++c) {
      const std::int64_t group = n * geometry.groups + c / geometry.channels_per_group;
      affines[n * geometry.channels + c] = channel_affine(mean[group], rstd[group], gamma[c], beta[c]);
    }
  }
  return affines;
}

// The ChannelAffine constants of every [n, c] as three [N, C] arrays, for
// the channels-last kernels.
struct ChannelAffineArrays {
  std::vector<float> mean;
  std::vector<float> scale;
  std::vector<float> shift;
};

ChannelAffineArrays split_affines(const std::vector<ChannelAffine>& affines) {
  ChannelAffineArrays arrays;
  for (const ChannelAffine& affine : affines) {
    arrays.mean.push_back(affine.mean);
    arrays.scale.push_back(affine.scale);
    arrays.shift.push_back(affine.shift);
  }
  return arrays;
}

// Computes the mean and rstd of one (n, group) block from the moments of its
// chunks. visit_chunks(callback) calls
// callback(sum, centered_squares, center, count) for each chunk of the block,
// always in the same order.
//
// The mean comes from the plain sum. Each chunk's squared deviations from
// its center c_i become deviations from the group mean with
//   sum (x - mean)^2 = squares_i + 2 d_i (sum_i - n_i c_i) + n_i d_i^2,
// d_i = c_i - mean. The identity is exact, and because c_i is close to the
// chunk mean, sum_i - n_i c_i is small and no large terms cancel.
template <class VisitChunks>
void combine_block_moments(const VisitChunks& visit_chunks, double group_elements, double eps, double* mean,
                           double* rstd) {
  double sum = 0.0;
  visit_chunks([&](double chunk_sum, double, float, double) { sum += chunk_sum; });
  const double block_mean = sum / group_elements;
  double squares = 0.0;
  visit_chunks([&](double chunk_sum, double centered_squares, float center, double count) {
    const double offset = static_cast<double>(center) - block_mean;
    squares += centered_squares + 2.0 * offset * (chunk_sum - count * center) + count * offset * offset;
  });
  const double variance = std::max(squares / group_elements, 0.0);
  *mean = block_mean;
  *rstd = 1.0 / std::sqrt(variance + eps);
}

struct ForwardResult {
  torch::Tensor output;
  torch::Tensor mean;  // [N, G] float64
  torch::Tensor rstd;  // [N, G] float64
};

ForwardResult run_forward(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                          std::int64_t groups, double eps) {
  const Geometry geometry = geometry_of(input, groups);
  const float* x = input.data_ptr<float>();

  // 1. Moments of every chunk, in parallel.
  std::vector<ChunkMoments> moments(geometry.items());
  for_each_item(geometry, [&](std::int64_t item) {
    chunk_moments(x + geometry.item_offset(item), geometry.item_count(item), &moments[item]);
  });

  // 2. Combine the chunks of each (n, group) in a fixed order, in float64.
  torch::Tensor mean_tensor = torch::empty({geometry.batch, groups}, torch::kFloat64);
  torch::Tensor rstd_tensor = torch::empty({geometry.batch, groups}, torch::kFloat64);
  double* mean = mean_tensor.data_ptr<double>();
  double* rstd = rstd_tensor.data_ptr<double>();
  const double group_elements = static_cast<double>(geometry.group_elements());
  const std::int64_t items_per_group = geometry.channels_per_group * geometry.chunks_per_plane;
  for (std::int64_t block = 0; block < geometry.batch * groups; ++block) {
    // The items of one (n, group) are consecutive because planes are.
    const std::int64_t first = block * items_per_group;
    const auto visit_chunks = [&](const auto& callback) {
      for (std::int64_t item = first; item < first + items_per_group; ++item) {
        const ChunkMoments& chunk = moments[item];
        callback(chunk.sum, chunk.centered_squares, chunk.center, static_cast<double>(geometry.item_count(item)));
      }
    };
    combine_block_moments(visit_chunks, group_elements, eps, &mean[block], &rstd[block]);
  }

  // 3. Normalise, scale, shift and clamp, in parallel.
  const std::vector<ChannelAffine> affines =
      channel_affines(geometry, mean, rstd, weight.data_ptr<float>(), bias.data_ptr<float>());
  torch::Tensor output = torch::empty_like(input);
  float* y = output.data_ptr<float>();
  for_each_item(geometry, [&](std::int64_t item) {
    const std::int64_t offset = geometry.item_offset(item);
    normalize_relu(x + offset, y + offset, geometry.item_count(item), affines[geometry.item_plane(item)]);
  });
  return {output, mean_tensor, rstd_tensor};
}

// Channels-last forward. input: [N, C, *] with is_channels_last_dense(input);
// the output gets the strides of input.
ForwardResult run_forward_channels_last(const torch::Tensor& input, const torch::Tensor& weight,
                                        const torch::Tensor& bias, std::int64_t groups, double eps) {
  const ChannelsLastGeometry geometry = channels_last_geometry_of(input, groups);
  const std::int64_t channels = geometry.channels;
  const float* x = input.data_ptr<float>();

  // 1. Moments of every chunk and channel, in parallel: [items, C] float
  // sums, centers and squared deviations from the centers.
  const std::int64_t partials = geometry.items() * channels;
  std::vector<float> sums(partials);
  std::vector<float> centers(partials);
  std::vector<float> squares(partials);
  for_each_item(geometry, [&](std::int64_t item) {
    const float* chunk = x + geometry.item_offset(item);
    const std::int64_t voxels = geometry.item_voxels(item);
    float* chunk_sums = &sums[item * channels];
    float* chunk_centers = &centers[item * channels];
    channel_sums(chunk, voxels, channels, chunk_sums);
    for (std::int64_t c = 0; c < channels; ++c) {
      chunk_centers[c] = static_cast<float>(static_cast<double>(chunk_sums[c]) / static_cast<double>(voxels));
    }
    channel_centered_squares(chunk, voxels, channels, chunk_centers, &squares[item * channels]);
  });

  // 2. Combine each (n, group) in float64, chunk by chunk and within a chunk
  // channel by channel. Blocks are independent, so running them in parallel
  // changes no bits.
  torch::Tensor mean_tensor = torch::empty({geometry.batch, groups}, torch::kFloat64);
  torch::Tensor rstd_tensor = torch::empty({geometry.batch, groups}, torch::kFloat64);
  double* mean = mean_tensor.data_ptr<double>();
  double* rstd = rstd_tensor.data_ptr<double>();
  const double group_elements = static_cast<double>(geometry.group_elements());
  at::parallel_for(0, geometry.batch * groups, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t block = begin; block < end; ++block) {
      const std::int64_t first_item = (block / groups) * geometry.chunks_per_sample;
      const std::int64_t first_channel = (block % groups) * geometry.channels_per_group;
      const auto visit_chunks = [&](const auto& callback) {
        for (std::int64_t item = first_item; item < first_item + geometry.chunks_per_sample; ++item) {
          const double count = static_cast<double>(geometry.item_voxels(item));
          for (std::int64_t c = first_channel; c < first_channel + geometry.channels_per_group; ++c) {
            const std::int64_t index = item * channels + c;
            callback(sums[index], squares[index], centers[index], count);
          }
        }
      };
      combine_block_moments(visit_chunks, group_elements, eps, &mean[block], &rstd[block]);
    }
  });

  // 3. Normalise, scale, shift and clamp, in parallel.
  const ChannelAffineArrays affines =
      split_affines(channel_affines(geometry, mean, rstd, weight.data_ptr<float>(), bias.data_ptr<float>()));
  // empty_like keeps the strides of a dense input, so y has the layout of x.
  torch::Tensor output = torch::empty_like(input);
  float* y = output.data_ptr<float>();
  for_each_item(geometry, [&](std::int64_t item) {
    const std::int64_t offset = geometry.item_offset(item);
    const std::int64_t first_plane = geometry.item_sample(item) * channels;
    normalize_relu_channels_last(x + offset, y + offset, geometry.item_voxels(item), channels,
                                 &affines.mean[first_plane], &affines.scale[first_plane],
                                 &affines.shift[first_plane]);
  });
  return {output, mean_tensor, rstd_tensor};
}

struct BackwardResult {
  torch::Tensor grad_input;   // undefined unless requested
  torch::Tensor grad_weight;  // [C]
  torch::Tensor grad_bias;    // [C]
};

// Per-plane sums of the backward pass, [N, C] float64 each.
struct PlaneGradientSums {
  std::vector<double> g;           // A[n, c] = sum_s g
  std::vector<double> g_centered;  // B[n, c] = sum_s g (x - mu)
};

// Turns sums of g (x - mean_f), with the float mean mean_f of ChannelAffine,
// into B by adding (mean_f - mu) A.
void center_on_group_means(const NormShape& geometry, const std::vector<ChannelAffine>& affines, const double* mean,
                           PlaneGradientSums* sums) {
  for (std::int64_t plane = 0; plane < geometry.batch * geometry.channels; ++plane) {
    const std::int64_t group = (plane / geometry.channels) * geometry.groups +
                               (plane % geometry.channels) / geometry.channels_per_group;
    sums->g_centered[plane] += (static_cast<double>(affines[plane].mean) - mean[group]) * sums->g[plane];
  }
}

// Fills grad_weight and grad_bias: dbeta[c] = sum_n A[n, c],
// dgamma[c] = sum_n r[n, g] B[n, c].
void parameter_gradients(const NormShape& geometry, const PlaneGradientSums& sums, const double* rstd,
                         const torch::Tensor& weight, BackwardResult* result) {
  const std::int64_t groups = geometry.groups;
  const std::vector<double>& sum_g = sums.g;
  const std::vector<double>& sum_g_centered = sums.g_centered;
  result->grad_weight = torch::empty({geometry.channels}, weight.options());
  result->grad_bias = torch::empty({geometry.channels}, weight.options());
  float* grad_gamma = result->grad_weight.data_ptr<float>();
  float* grad_beta = result->grad_bias.data_ptr<float>();
  for (std::int64_t c = 0; c < geometry.channels; ++c) {
    double dgamma = 0.0;
    double dbeta = 0.0;
    for (std::int64_t n = 0; n < geometry.batch; ++n) {
      const std::int64_t plane = n * geometry.channels + c;
      dgamma += rstd[n * groups + c / geometry.channels_per_group] * sum_g_centered[plane];
      dbeta += sum_g[plane];
    }
    grad_gamma[c] = static_cast<float>(dgamma);
    grad_beta[c] = static_cast<float>(dbeta);
  }
}

// Computes the dx coefficients of every plane from mean(h) and mean(h xhat)
// of its (n, group). Per plane, with xhat = r (x - mean_f) + r (mean_f - mu):
//   dx = r gamma g - r mean(h) - r mean(h xhat) xhat
//      = [r gamma] g + [-r^2 mean(h xhat)] (x - mean_f)
//        + [-r mean(h) - r^2 mean(h xhat) (mean_f - mu)]
std::vector<InputGradientCoefficients> input_gradient_coefficients(const NormShape& geometry,
                                                                   const PlaneGradientSums& sums,
                                                                   const std::vector<ChannelAffine>& affines,
                                                                   const float* gamma, const double* mean,
                                                                   const double* rstd) {
  const std::int64_t groups = geometry.groups;
  const std::vector<double>& sum_g = sums.g;
  const std::vector<double>& sum_g_centered = sums.g_centered;
  const double group_elements = static_cast<double>(geometry.group_elements());
  std::vector<InputGradientCoefficients> coefficients(geometry.batch * geometry.channels);
  for (std::int64_t n = 0; n < geometry.batch; ++n) {
    for (std::int64_t group = 0; group < groups; ++group) {
      const std::int64_t block = n * groups + group;
      const double r = rstd[block];
      const std::int64_t first_plane = n * geometry.channels + group * geometry.channels_per_group;
      double sum_h = 0.0;
      double sum_h_centered = 0.0;
      for (std::int64_t k = 0; k < geometry.channels_per_group; ++k) {
        const double gamma_c = gamma[group * geometry.channels_per_group + k];
        sum_h += gamma_c * sum_g[first_plane + k];
        sum_h_centered += gamma_c * sum_g_centered[first_plane + k];
      }
      const double mean_h = sum_h / group_elements;
      const double mean_h_xhat = r * sum_h_centered / group_elements;
      for (std::int64_t k = 0; k < geometry.channels_per_group; ++k) {
        const std::int64_t plane = first_plane + k;
        const double gamma_c = gamma[group * geometry.channels_per_group + k];
        const double mean_offset = static_cast<double>(affines[plane].mean) - mean[block];
        coefficients[plane] = {static_cast<float>(r * gamma_c), static_cast<float>(-r * r * mean_h_xhat),
                               static_cast<float>(-r * mean_h - r * r * mean_h_xhat * mean_offset)};
      }
    }
  }
  return coefficients;
}

BackwardResult run_backward(const torch::Tensor& grad_output, const torch::Tensor& input,
                            const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& mean_tensor,
                            const torch::Tensor& rstd_tensor, std::int64_t groups, bool need_grad_input) {
  const Geometry geometry = geometry_of(input, groups);
  const float* x = input.data_ptr<float>();
  const float* dy = grad_output.data_ptr<float>();
  const float* gamma = weight.data_ptr<float>();
  const double* mean = mean_tensor.data_ptr<double>();
  const double* rstd = rstd_tensor.data_ptr<double>();
  const std::vector<ChannelAffine> affines = channel_affines(geometry, mean, rstd, gamma, bias.data_ptr<float>());

  // 1. Masked gradient sums of every chunk, in parallel.
  std::vector<GradientSums> chunk_sums(geometry.items());
  for_each_item(geometry, [&](std::int64_t item) {
    chunk_gradient_sums(x + geometry.item_offset(item), dy + geometry.item_offset(item), geometry.item_count(item),
                        affines[geometry.item_plane(item)], &chunk_sums[item]);
  });

  // 2. Per plane: A = sum g and B = sum g (x - mu).
  const std::int64_t planes = geometry.batch * geometry.channels;
  PlaneGradientSums plane_sums{std::vector<double>(planes, 0.0), std::vector<double>(planes, 0.0)};
  for (std::int64_t plane = 0; plane < planes; ++plane) {
    for (std::int64_t k = 0; k < geometry.chunks_per_plane; ++k) {
      const GradientSums& sums = chunk_sums[plane * geometry.chunks_per_plane + k];
      plane_sums.g[plane] += sums.g;
      plane_sums.g_centered[plane] += sums.g_centered;
    }
  }
  center_on_group_means(geometry, affines, mean, &plane_sums);

  // 3. dgamma and dbeta.
  BackwardResult result;
  parameter_gradients(geometry, plane_sums, rstd, weight, &result);
  if (!need_grad_input) {
    return result;
  }

  // 4. dx coefficients per plane.
  const std::vector<InputGradientCoefficients> coefficients =
      input_gradient_coefficients(geometry, plane_sums, affines, gamma, mean, rstd);

  // 5. dx, in parallel.
  result.grad_input = torch::empty_like(input);
  float* dx = result.grad_input.data_ptr<float>();
  for_each_item(geometry, [&](std::int64_t item) {
    const std::int64_t offset = geometry.item_offset(item);
    const std::int64_t plane = geometry.item_plane(item);
    input_gradient(x + offset, dy + offset, dx + offset, geometry.item_count(item), affines[plane],
                   coefficients[plane]);
  });
  return result;
}

// Channels-last backward. input and grad_output: [N, C, *], both
// is_channels_last_dense. grad_input gets the strides of input.
BackwardResult run_backward_channels_last(const torch::Tensor& grad_output, const torch::Tensor& input,
                                          const torch::Tensor& weight, const torch::Tensor& bias,
                                          const torch::Tensor& mean_tensor, const torch::Tensor& rstd_tensor,
                                          std::int64_t groups, bool need_grad_input) {
  const ChannelsLastGeometry geometry = channels_last_geometry_of(input, groups);
  const std::int64_t channels = geometry.channels;
  const float* x = input.data_ptr<float>();
  const float* dy = grad_output.data_ptr<float>();
  const float* gamma = weight.data_ptr<float>();
  const double* mean = mean_tensor.data_ptr<double>();
  const double* rstd = rstd_tensor.data_ptr<double>();
  const std::vector<ChannelAffine> affines = channel_affines(geometry, mean, rstd, gamma, bias.data_ptr<float>());
  const ChannelAffineArrays affine_arrays = split_affines(affines);

  // 1. Masked gradient sums of every chunk and channel, in parallel, as
  // [items, C] floats.
  const std::int64_t partials = geometry.items() * channels;
  std::vector<float> chunk_g_sums(partials);
  std::vector<float> chunk_g_centered_sums(partials);
  for_each_item(geometry, [&](std::int64_t item) {
    const std::int64_t offset = geometry.item_offset(item);
    const std::int64_t first_plane = geometry.item_sample(item) * channels;
    channel_gradient_sums(x + offset, dy + offset, geometry.item_voxels(item), channels,
                          &affine_arrays.mean[first_plane], &affine_arrays.scale[first_plane],
                          &affine_arrays.shift[first_plane], &chunk_g_sums[item * channels],
                          &chunk_g_centered_sums[item * channels]);
  });

  // 2. Per plane: A = sum g and B = sum g (x - mu), adding the chunks of
  // each sample in order.
  const std::int64_t planes = geometry.batch * channels;
  PlaneGradientSums plane_sums{std::vector<double>(planes, 0.0), std::vector<double>(planes, 0.0)};
  for (std::int64_t item = 0; item < geometry.items(); ++item) {
    const std::int64_t first_plane = geometry.item_sample(item) * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      plane_sums.g[first_plane + c] += chunk_g_sums[item * channels + c];
      plane_sums.g_centered[first_plane + c] += chunk_g_centered_sums[item * channels + c];
    }
  }
  center_on_group_means(geometry, affines, mean, &plane_sums);

  // 3. dgamma and dbeta.
  BackwardResult result;
  parameter_gradients(geometry, plane_sums, rstd, weight, &result);
  if (!need_grad_input) {
    return result;
  }

  // 4. dx coefficients per plane, as [N, C] arrays.
  const std::vector<InputGradientCoefficients> coefficients =
      input_gradient_coefficients(geometry, plane_sums, affines, gamma, mean, rstd);
  std::vector<float> g_coefficients;
  std::vector<float> centered_coefficients;
  std::vector<float> constants;
  for (const InputGradientCoefficients& plane : coefficients) {
    g_coefficients.push_back(plane.g_coefficient);
    centered_coefficients.push_back(plane.centered_coefficient);
    constants.push_back(plane.constant);
  }

  // 5. dx, in parallel.
  result.grad_input = torch::empty_like(input);
  float* dx = result.grad_input.data_ptr<float>();
  for_each_item(geometry, [&](std::int64_t item) {
    const std::int64_t offset = geometry.item_offset(item);
    const std::int64_t first_plane = geometry.item_sample(item) * channels;
    input_gradient_channels_last(x + offset, dy + offset, dx + offset, geometry.item_voxels(item), channels,
                                 &affine_arrays.mean[first_plane], &affine_arrays.scale[first_plane],
                                 &affine_arrays.shift[first_plane], &g_coefficients[first_plane],
                                 &centered_coefficients[first_plane], &constants[first_plane]);
  });
  return result;
}

// Autograd function over the fused kernels: inputs (input, weight, bias,
// groups, eps), all float32 CPU, shapes already checked. A contiguous input
// runs the contiguous kernels. Any other input must be
// is_channels_last_dense and runs the channels-last kernels, and its output
// and input gradient have its strides.
class GroupNormReLUFunction : public torch::autograd::Function<GroupNormReLUFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, const torch::Tensor& bias, std::int64_t groups,
                               double eps) {
    ForwardResult result = input.is_contiguous()
                               ? run_forward(input, weight.contiguous(), bias.contiguous(), groups, eps)
                               : run_forward_channels_last(input, weight.contiguous(), bias.contiguous(), groups, eps);
    ctx->save_for_backward({input, weight, bias, result.mean, result.rstd});
    ctx->saved_data["groups"] = groups;
    return result.output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // The kernels record nothing on the autograd tape, so a graph of this
    // backward pass would silently miss their dependence on the inputs.
    if (at::GradMode::is_enabled()) {
      throw std::runtime_error(
          "group_norm_relu: double backward is not supported, so call backward() without create_graph or use "
          "torch::relu(torch::group_norm(...)) for this layer");
    }

    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& input = saved[0];
    const torch::Tensor weight = saved[1].contiguous();
    const torch::Tensor bias = saved[2].contiguous();
    const std::int64_t groups = ctx->saved_data["groups"].toInt();

    // grad_output: the shape of input, possibly a broadcast view or in
    // another layout than input, in which case it is copied once.
    BackwardResult result;
    if (input.is_contiguous()) {
      const torch::Tensor grad_output = grad_outputs[0].contiguous();
      result = run_backward(grad_output, input, weight, bias, saved[3], saved[4], groups, ctx->needs_input_grad(0));
    } else {
      const torch::Tensor grad_output = is_channels_last_dense(grad_outputs[0])
                                            ? grad_outputs[0]
                                            : torch::empty_like(input).copy_(grad_outputs[0]);
      result = run_backward_channels_last(grad_output, input, weight, bias, saved[3], saved[4], groups,
                                          ctx->needs_input_grad(0));
    }
    return {result.grad_input, ctx->needs_input_grad(1) ? result.grad_weight : torch::Tensor(),
            ctx->needs_input_grad(2) ? result.grad_bias : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

std::string shape_string(const torch::Tensor& tensor) {
  return fmt::format("[{}]", fmt::join(tensor.sizes(), ", "));
}

void check_arguments(const torch::Tensor& input, std::int64_t groups, const torch::Tensor& weight,
                     const torch::Tensor& bias, double eps) {
  constexpr const char* kFunction = "group_norm_relu";
  if (!input.defined() || !weight.defined() || !bias.defined()) {
    throw std::invalid_argument(fmt::format("{}: input, weight and bias must all be defined tensors", kFunction));
  }
  if (input.dim() < 3) {
    throw std::invalid_argument(fmt::format(
        "{}: input must be [N, C, *] with at least one spatial dimension, got shape {}", kFunction,
        shape_string(input)));
  }
  const std::int64_t channels = input.size(1);
  if (groups < 1 || channels % groups != 0) {
    throw std::invalid_argument(fmt::format("{}: groups={} must be at least 1 and divide the {} channels of input {}",
                                            kFunction, groups, channels, shape_string(input)));
  }
  const auto check_per_channel = [&](const char* name, const torch::Tensor& tensor) {
    if (tensor.dim() != 1 || tensor.size(0) != channels) {
      throw std::invalid_argument(fmt::format("{}: {} has shape {} but must be [{}], one value per channel of input {}",
                                              kFunction, name, shape_string(tensor), channels, shape_string(input)));
    }
  };
  check_per_channel("weight", weight);
  check_per_channel("bias", bias);
  if (!std::isfinite(eps) || eps < 0.0) {
    throw std::invalid_argument(fmt::format("{}: eps={} must be finite and non-negative", kFunction, eps));
  }
}

bool fused_kernels_apply(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  for (const torch::Tensor* tensor : {&input, &weight, &bias}) {
    if (tensor->device().type() != torch::kCPU || tensor->scalar_type() != torch::kFloat32 ||
        tensor->layout() != torch::kStrided) {
      return false;
    }
  }
  return input.numel() > 0;
}

}  // namespace

torch::Tensor group_norm_relu(const torch::Tensor& input, std::int64_t groups, const torch::Tensor& weight,
                              const torch::Tensor& bias, double eps) {
  check_arguments(input, groups, weight, bias, eps);
  if (!fused_kernels_apply(input, weight, bias)) {
    return torch::relu(torch::group_norm(input, groups, weight, bias, eps));
  }
  // A contiguous or channels-last input runs as it is. Anything else, such
  // as a permuted view, is copied to contiguous.
  const bool runs_as_is = input.is_contiguous() || is_channels_last_dense(input);
  return GroupNormReLUFunction::apply(runs_as_is ? input : input.contiguous(), weight, bias, groups, eps);
}

GroupNormReLUImpl::GroupNormReLUImpl(std::int64_t groups, std::int64_t channels, double eps)
    : groups_(groups), channels_(channels), eps_(eps) {
  if (groups < 1 || channels < 1 || channels % groups != 0) {
    throw std::invalid_argument(fmt::format(
        "GroupNormReLU: groups={} and channels={} must both be at least 1 and groups must divide channels", groups,
        channels));
  }
  weight = register_parameter("weight", torch::empty({channels}));
  bias = register_parameter("bias", torch::empty({channels}));
  reset_parameters();
}

torch::Tensor GroupNormReLUImpl::forward(const torch::Tensor& x) {
  return group_norm_relu(x, groups_, weight, bias, eps_);
}

void GroupNormReLUImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.fill_(1.0);
  bias.zero_();
}

void GroupNormReLUImpl::pretty_print(std::ostream& stream) const {
  stream << "scaffold::GroupNormReLU(" << groups_ << ", " << channels_ << ", eps=" << eps_ << ")";
}

}  // namespace scaffold
