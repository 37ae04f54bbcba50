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

// Shapes: x, y, dy, dx are [N, C, S] contiguous float32, S the product of the
// spatial sizes. Channel c belongs to group c / (C / G). Within one (n, group)
// block of M = (C / G) * S elements:
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

// Tensor sizes and the split of each [n, c] plane into chunks.
struct Geometry {
  std::int64_t batch;
  std::int64_t channels;
  std::int64_t groups;
  std::int64_t channels_per_group;
  std::int64_t plane;              // S, elements per [n, c]
  std::int64_t chunk;              // elements per full chunk
  std::int64_t chunks_per_plane;

  std::int64_t items() const { return batch * channels * chunks_per_plane; }
  std::int64_t group_elements() const { return channels_per_group * plane; }
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
  geometry.batch = input.size(0);
  geometry.channels = input.size(1);
  geometry.groups = groups;
  geometry.channels_per_group = geometry.channels / groups;
  geometry.plane = input.numel() / (geometry.batch * geometry.channels);
  geometry.chunk = std::min(geometry.plane, kChunkElements);
  geometry.chunks_per_plane = (geometry.plane + geometry.chunk - 1) / geometry.chunk;
  return geometry;
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

// Runs body(item) for every work item on LibTorch's intra-op threads. Each
// item writes only its own outputs, so the results do not depend on how
// parallel_for splits the range.
template <class Body>
void for_each_item(const Geometry& geometry, const Body& body) {
  at::parallel_for(0, geometry.items(), geometry.grain(), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t item = begin; item < end; ++item) {
      body(item);
    }
  });
}

std::vector<ChannelAffine> channel_affines(const Geometry& geometry, const double* mean, const double* rstd,
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
  // The mean comes from the plain sum. Each chunk's squared deviations from
  // its center c_i become deviations from the group mean with
  //   sum (x - mean)^2 = squares_i + 2 d_i (sum_i - n_i c_i) + n_i d_i^2,
  // d_i = c_i - mean. The identity is exact, and because c_i is close to the
  // chunk mean, sum_i - n_i c_i is small and no large terms cancel.
  torch::Tensor mean_tensor = torch::empty({geometry.batch, groups}, torch::kFloat64);
  torch::Tensor rstd_tensor = torch::empty({geometry.batch, groups}, torch::kFloat64);
  double* mean = mean_tensor.data_ptr<double>();
  double* rstd = rstd_tensor.data_ptr<double>();
  const double group_elements = static_cast<double>(geometry.group_elements());
  const std::int64_t items_per_group = geometry.channels_per_group * geometry.chunks_per_plane;
  for (std::int64_t block = 0; block < geometry.batch * groups; ++block) {
    // The items of one (n, group) are consecutive because planes are.
    const std::int64_t first = block * items_per_group;
    double sum = 0.0;
    for (std::int64_t item = first; item < first + items_per_group; ++item) {
      sum += moments[item].sum;
    }
    const double block_mean = sum / group_elements;
    double squares = 0.0;
    for (std::int64_t item = first; item < first + items_per_group; ++item) {
      const ChunkMoments& chunk = moments[item];
      const double count = static_cast<double>(geometry.item_count(item));
      const double offset = static_cast<double>(chunk.center) - block_mean;
      squares += chunk.centered_squares + 2.0 * offset * (chunk.sum - count * chunk.center) +
                 count * offset * offset;
    }
    const double variance = std::max(squares / group_elements, 0.0);
    mean[block] = block_mean;
    rstd[block] = 1.0 / std::sqrt(variance + eps);
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

struct BackwardResult {
  torch::Tensor grad_input;   // undefined unless requested
  torch::Tensor grad_weight;  // [C]
  torch::Tensor grad_bias;    // [C]
};

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

  // 2. Per plane: A = sum g and B = sum g (x - mu). The chunks summed
  // g (x - mean_f) with the float mean mean_f, so B adds (mean_f - mu) A.
  const std::int64_t planes = geometry.batch * geometry.channels;
  std::vector<double> sum_g(planes, 0.0);
  std::vector<double> sum_g_centered(planes, 0.0);
  for (std::int64_t plane = 0; plane < planes; ++plane) {
    for (std::int64_t k = 0; k < geometry.chunks_per_plane; ++k) {
      const GradientSums& sums = chunk_sums[plane * geometry.chunks_per_plane + k];
      sum_g[plane] += sums.g;
      sum_g_centered[plane] += sums.g_centered;
    }
    const std::int64_t group = (plane / geometry.channels) * groups +
                               (plane % geometry.channels) / geometry.channels_per_group;
    sum_g_centered[plane] += (static_cast<double>(affines[plane].mean) - mean[group]) * sum_g[plane];
  }

  // 3. dbeta[c] = sum_n A[n, c], dgamma[c] = sum_n r[n, g] B[n, c].
  BackwardResult result;
  result.grad_weight = torch::empty({geometry.channels}, weight.options());
  result.grad_bias = torch::empty({geometry.channels}, weight.options());
  float* grad_gamma = result.grad_weight.data_ptr<float>();
  float* grad_beta = result.grad_bias.data_ptr<float>();
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
  if (!need_grad_input) {
    return result;
  }

  // 4. Per (n, group): mean(h) and mean(h xhat). Per plane, with
  // xhat = r (x - mean_f) + r (mean_f - mu):
  //   dx = r gamma g - r mean(h) - r mean(h xhat) xhat
  //      = [r gamma] g + [-r^2 mean(h xhat)] (x - mean_f)
  //        + [-r mean(h) - r^2 mean(h xhat) (mean_f - mu)]
  const double group_elements = static_cast<double>(geometry.group_elements());
  std::vector<InputGradientCoefficients> coefficients(planes);
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

// Autograd function over the fused kernels: inputs (input, weight, bias,
// groups, eps), all float32 CPU, input contiguous, shapes already checked.
class GroupNormReLUFunction : public torch::autograd::Function<GroupNormReLUFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, const torch::Tensor& bias, std::int64_t groups,
                               double eps) {
    ForwardResult result = run_forward(input, weight.contiguous(), bias.contiguous(), groups, eps);
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

    // grad_output: the shape of input, possibly a broadcast view.
    const torch::Tensor grad_output = grad_outputs[0].contiguous();

    BackwardResult result = run_backward(grad_output, input, weight, bias, saved[3], saved[4], groups,
                                         ctx->needs_input_grad(0));
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
  return GroupNormReLUFunction::apply(input.contiguous(), weight, bias, groups, eps);
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
