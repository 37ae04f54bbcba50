// Tests of the fused GroupNorm + ReLU kernels in src/cuda against a float64
// reference on the host. The reference backward is itself checked against
// central finite differences, so the GPU comparison rests on an independent
// derivation. Host-side checks (reference, planning, argument errors) run
// everywhere; the GPU cases are skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/group_norm_relu_kernels.hpp"

namespace scaffold::cuda {

// Prints a shape in test names and failure messages as {N, S, C, G}.
void PrintTo(const GroupNormReluShape& shape, std::ostream* out) {
  *out << "{N=" << shape.batch << ", S=" << shape.spatial << ", C=" << shape.channels << ", G=" << shape.groups << "}";
}

}  // namespace scaffold::cuda

namespace {

using scaffold::cuda::GroupNormReluPlan;
using scaffold::cuda::GroupNormReluShape;

// Returns why the GPU tests cannot run here, or an empty string.
std::string missing_device_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error for later calls
    return std::string("no usable CUDA device: ") + cudaGetErrorString(status);
  }
  if (count == 0) {
    return "no CUDA device";
  }
  return {};
}

#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    const std::string skip_reason = missing_device_reason(); \
    if (!skip_reason.empty()) {                              \
      GTEST_SKIP() << skip_reason;                           \
    }                                                        \
  } while (false)

void expect_cuda(cudaError_t status, const char* call) {
  ASSERT_EQ(status, cudaSuccess) << call << ": " << cudaGetErrorString(status);
}

double round_to_bf16(double value) { return __bfloat162float(__float2bfloat16(static_cast<float>(value))); }

// One problem: activations [N, S, C] channels-last, values exactly
// representable in bf16 so that host and GPU see the same numbers.
struct Problem {
  GroupNormReluShape shape;
  std::vector<double> x;
  std::vector<double> dy;
  std::vector<double> gamma;
  std::vector<double> beta;
  double eps = 1e-5;

  std::int64_t channels_per_group() const { return shape.channels / shape.groups; }
  std::int64_t at(std::int64_t n, std::int64_t s, std::int64_t c) const {
    return (n * shape.spatial + s) * shape.channels + c;
  }
};

Problem make_problem(GroupNormReluShape shape, unsigned seed, double x_mean = 0.5, double x_spread = 1.5) {
  std::mt19937 generator(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Problem p;
  p.shape = shape;
  const std::int64_t count = shape.batch * shape.spatial * shape.channels;
  p.x.resize(count);
  p.dy.resize(count);
  for (std::int64_t i = 0; i < count; ++i) {
    // A per-channel offset makes the groups' statistics differ from one another.
    const double offset = 0.1 * static_cast<double>(i % shape.channels % 7);
    p.x[i] = round_to_bf16(x_mean + offset + x_spread * normal(generator));
    p.dy[i] = round_to_bf16(normal(generator));
  }
  for (std::int64_t c = 0; c < shape.channels; ++c) {
    p.gamma.push_back(static_cast<float>(1.0 + 0.3 * normal(generator)));
    p.beta.push_back(static_cast<float>(0.2 * normal(generator)));
  }
  return p;
}

struct Stats {
  std::vector<double> mean;  // [N, G]
  std::vector<double> rstd;  // [N, G]
};

// Two-pass mean and biased variance in float64.
Stats reference_stats(const Problem& p) {
  const GroupNormReluShape& s = p.shape;
  const std::int64_t cg = p.channels_per_group();
  const double count = static_cast<double>(s.spatial * cg);
  Stats stats;
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t g = 0; g < s.groups; ++g) {
      double sum = 0.0;
      for (std::int64_t v = 0; v < s.spatial; ++v) {
        for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          sum += p.x[p.at(n, v, c)];
        }
      }
      const double mean = sum / count;
      double squares = 0.0;
      for (std::int64_t v = 0; v < s.spatial; ++v) {
        for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          const double d = p.x[p.at(n, v, c)] - mean;
          squares += d * d;
        }
      }
      stats.mean.push_back(mean);
      stats.rstd.push_back(1.0 / std::sqrt(squares / count + p.eps));
    }
  }
  return stats;
}

// z = (x - mean) * rstd * gamma + beta in float64. [N, S, C]
std::vector<double> reference_z(const Problem& p, const Stats& stats) {
  const GroupNormReluShape& s = p.shape;
  std::vector<double> z(p.x.size());
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t v = 0; v < s.spatial; ++v) {
      for (std::int64_t c = 0; c < s.channels; ++c) {
        const std::int64_t slot = n * s.groups + c / p.channels_per_group();
        const std::int64_t i = p.at(n, v, c);
        z[i] = (p.x[i] - stats.mean[slot]) * stats.rstd[slot] * p.gamma[c] + p.beta[c];
      }
    }
  }
  return z;
}

// The kernels' ReLU mask: z > 0 with z computed in float exactly as the
// header specifies, from the statistics the GPU produced.
std::vector<char> kernel_mask(const Problem& p, const std::vector<float>& mean, const std::vector<float>& rstd) {
  const GroupNormReluShape& s = p.shape;
  std::vector<char> mask(p.x.size());
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t v = 0; v < s.spatial; ++v) {
      for (std::int64_t c = 0; c < s.channels; ++c) {
        const std::int64_t slot = n * s.groups + c / p.channels_per_group();
        const float scale = rstd[slot] * static_cast<float>(p.gamma[c]);
        const float shift = std::fma(-mean[slot], scale, static_cast<float>(p.beta[c]));
        const std::int64_t i = p.at(n, v, c);
        mask[i] = std::fma(static_cast<float>(p.x[i]), scale, shift) > 0.0f ? 1 : 0;
      }
    }
  }
  return mask;
}

struct Gradients {
  std::vector<double> dx;
  std::vector<double> dgamma;
  std::vector<double> dbeta;
  std::vector<double> dgamma_scale;  // sum of |terms| of dgamma, for tolerances
  std::vector<double> dbeta_scale;
};

// GroupNorm + ReLU backward in float64 for a given ReLU mask and statistics:
// dx = rstd * (gamma dz - mean_g(gamma dz) - xhat mean_g(gamma dz xhat)).
Gradients reference_backward(const Problem& p, const Stats& stats, const std::vector<char>& mask) {
  const GroupNormReluShape& s = p.shape;
  const std::int64_t cg = p.channels_per_group();
  const double count = static_cast<double>(s.spatial * cg);
  Gradients grads;
  grads.dx.assign(p.x.size(), 0.0);
  grads.dgamma.assign(s.channels, 0.0);
  grads.dbeta.assign(s.channels, 0.0);
  grads.dgamma_scale.assign(s.channels, 0.0);
  grads.dbeta_scale.assign(s.channels, 0.0);
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t g = 0; g < s.groups; ++g) {
      const double mean = stats.mean[n * s.groups + g];
      const double rstd = stats.rstd[n * s.groups + g];
      double gamma_dz = 0.0;
      double gamma_dz_xhat = 0.0;
      for (std::int64_t v = 0; v < s.spatial; ++v) {
        for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          const std::int64_t i = p.at(n, v, c);
          const double dz = mask[i] ? p.dy[i] : 0.0;
          const double xhat = (p.x[i] - mean) * rstd;
          gamma_dz += p.gamma[c] * dz;
          gamma_dz_xhat += p.gamma[c] * dz * xhat;
          grads.dbeta[c] += dz;
          grads.dgamma[c] += dz * xhat;
          grads.dbeta_scale[c] += std::abs(dz);
          grads.dgamma_scale[c] += std::abs(dz * xhat);
        }
      }
      for (std::int64_t v = 0; v < s.spatial; ++v) {
        for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          const std::int64_t i = p.at(n, v, c);
          const double dz = mask[i] ? p.dy[i] : 0.0;
          const double xhat = (p.x[i] - mean) * rstd;
          grads.dx[i] = rstd * (p.gamma[c] * dz - gamma_dz / count - xhat * gamma_dz_xhat / count);
        }
      }
    }
  }
  return grads;
}

// sum(dy * relu(z)) in float64: the scalar whose gradient the backward returns.
double reference_loss(const Problem& p) {
  const std::vector<double> z = reference_z(p, reference_stats(p));
  double loss = 0.0;
  for (std::size_t i = 0; i < z.size(); ++i) {
    loss += p.dy[i] * std::max(z[i], 0.0);
  }
  return loss;
}

class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    const cudaError_t status = cudaMalloc(&pointer_, std::max<std::size_t>(bytes, 1));
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("cudaMalloc failed: ") + cudaGetErrorString(status));
    }
  }
  ~DeviceBuffer() { cudaFree(pointer_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(pointer_);
  }

 private:
  void* pointer_ = nullptr;
  std::size_t bytes_;
};

std::vector<__nv_bfloat16> to_bf16(const std::vector<double>& values) {
  std::vector<__nv_bfloat16> result;
  result.reserve(values.size());
  for (double value : values) {
    result.push_back(__float2bfloat16(static_cast<float>(value)));
  }
  return result;
}

std::vector<float> to_float(const std::vector<double>& values) { return {values.begin(), values.end()}; }

std::vector<float> from_bf16(const std::vector<__nv_bfloat16>& values) {
  std::vector<float> result;
  result.reserve(values.size());
  for (const __nv_bfloat16 value : values) {
    result.push_back(__bfloat162float(value));
  }
  return result;
}

struct GpuResult {
  GroupNormReluPlan plan;
  std::vector<float> y;
  std::vector<float> mean;
  std::vector<float> rstd;
  std::vector<float> dx;
  std::vector<float> dgamma;
  std::vector<float> dbeta;
};

template <typename T>
void upload(const DeviceBuffer& target, const std::vector<T>& values) {
  expect_cuda(cudaMemcpy(target.as<void>(), values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice),
              "cudaMemcpy to device");
}

template <typename T>
void download(std::vector<T>& values, const DeviceBuffer& source, std::size_t count) {
  values.resize(count);
  expect_cuda(cudaMemcpy(values.data(), source.as<void>(), count * sizeof(T), cudaMemcpyDeviceToHost),
              "cudaMemcpy to host");
}

// Runs forward and backward on the current device, on the default stream.
GpuResult run_on_gpu(const Problem& p) {
  int device = 0;
  int multiprocessors = 0;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device), cudaSuccess);

  GpuResult result;
  result.plan = scaffold::cuda::plan_group_norm_relu(p.shape, multiprocessors);
  const GroupNormReluShape& s = p.shape;
  const std::size_t count = p.x.size();
  const std::size_t stats_count = static_cast<std::size_t>(s.batch * s.groups);
  const std::size_t channels = static_cast<std::size_t>(s.channels);

  DeviceBuffer x(count * sizeof(__nv_bfloat16));
  DeviceBuffer dy(count * sizeof(__nv_bfloat16));
  DeviceBuffer y(count * sizeof(__nv_bfloat16));
  DeviceBuffer dx(count * sizeof(__nv_bfloat16));
  DeviceBuffer gamma(channels * sizeof(float));
  DeviceBuffer beta(channels * sizeof(float));
  DeviceBuffer dgamma(channels * sizeof(float));
  DeviceBuffer dbeta(channels * sizeof(float));
  DeviceBuffer mean(stats_count * sizeof(float));
  DeviceBuffer rstd(stats_count * sizeof(float));
  DeviceBuffer workspace(std::max(result.plan.forward_workspace_bytes, result.plan.backward_workspace_bytes));
  upload(x, to_bf16(p.x));
  upload(dy, to_bf16(p.dy));
  upload(gamma, to_float(p.gamma));
  upload(beta, to_float(p.beta));

  scaffold::cuda::group_norm_relu_forward(result.plan, x.as<__nv_bfloat16>(), gamma.as<float>(), beta.as<float>(),
                                          static_cast<float>(p.eps), y.as<__nv_bfloat16>(), mean.as<float>(),
                                          rstd.as<float>(), workspace.as<void>(), nullptr);
  scaffold::cuda::group_norm_relu_backward(result.plan, dy.as<__nv_bfloat16>(), x.as<__nv_bfloat16>(),
                                           gamma.as<float>(), beta.as<float>(), mean.as<float>(), rstd.as<float>(),
                                           dx.as<__nv_bfloat16>(), dgamma.as<float>(), dbeta.as<float>(),
                                           workspace.as<void>(), nullptr);
  expect_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the kernels");

  std::vector<__nv_bfloat16> y_bf16;
  std::vector<__nv_bfloat16> dx_bf16;
  download(y_bf16, y, count);
  download(dx_bf16, dx, count);
  result.y = from_bf16(y_bf16);
  result.dx = from_bf16(dx_bf16);
  download(result.mean, mean, stats_count);
  download(result.rstd, rstd, stats_count);
  download(result.dgamma, dgamma, channels);
  download(result.dbeta, dbeta, channels);
  return result;
}

double max_abs(const std::vector<double>& values) {
  double result = 0.0;
  for (double value : values) {
    result = std::max(result, std::abs(value));
  }
  return result;
}

// Relative tolerance of a bf16 output. Half an ulp is 2^-9 relative, and 2^-8
// leaves room for float rounding before the conversion.
constexpr double kBf16Relative = 1.0 / 256.0;

TEST(GroupNormReluReference, BackwardMatchesFiniteDifferences) {
  // Redraw until no z lies within 1e-3 of the ReLU kink, so that a step of
  // 1e-6 never crosses it.
  Problem p;
  for (unsigned seed = 1;; ++seed) {
    p = make_problem({2, 6, 16, 2}, seed);
    const std::vector<double> z = reference_z(p, reference_stats(p));
    const bool clear_of_kink = std::all_of(z.begin(), z.end(), [](double value) { return std::abs(value) > 1e-3; });
    if (clear_of_kink) {
      break;
    }
    ASSERT_LT(seed, 200u) << "no draw kept every z away from 0";
  }
  const Stats stats = reference_stats(p);
  const std::vector<double> z = reference_z(p, stats);
  std::vector<char> mask(z.size());
  std::transform(z.begin(), z.end(), mask.begin(), [](double value) { return value > 0.0 ? 1 : 0; });
  const Gradients grads = reference_backward(p, stats, mask);

  constexpr double kStep = 1e-6;
  const auto central_difference = [&p](std::vector<double>& values, std::size_t i) {
    const double saved = values[i];
    values[i] = saved + kStep;
    const double plus = reference_loss(p);
    values[i] = saved - kStep;
    const double minus = reference_loss(p);
    values[i] = saved;
    return (plus - minus) / (2 * kStep);
  };
  for (std::size_t i = 0; i < p.x.size(); ++i) {
    EXPECT_NEAR(grads.dx[i], central_difference(p.x, i), 1e-6) << "dx at " << i;
  }
  for (std::size_t c = 0; c < p.gamma.size(); ++c) {
    EXPECT_NEAR(grads.dgamma[c], central_difference(p.gamma, c), 1e-6) << "dgamma at " << c;
    EXPECT_NEAR(grads.dbeta[c], central_difference(p.beta, c), 1e-6) << "dbeta at " << c;
  }
}

TEST(GroupNormReluPlan, RejectsUnsupportedShapes) {
  using scaffold::cuda::group_norm_relu_unsupported_reason;
  EXPECT_EQ(group_norm_relu_unsupported_reason({1, 8, 64, 8}), "");
  EXPECT_EQ(group_norm_relu_unsupported_reason({2, 1, 2048, 32}), "");
  EXPECT_NE(group_norm_relu_unsupported_reason({0, 8, 64, 8}), "");
  EXPECT_NE(group_norm_relu_unsupported_reason({1, 0, 64, 8}), "");
  EXPECT_NE(group_norm_relu_unsupported_reason({1, 8, 4096, 8}), "");
  EXPECT_NE(group_norm_relu_unsupported_reason({1, 8, 4, 1}), "");
  EXPECT_NE(group_norm_relu_unsupported_reason({1, 8, 64, 7}), "");
  EXPECT_NE(group_norm_relu_unsupported_reason({1, 8, 64, 16}), "");  // 4 channels per group
  EXPECT_NE(group_norm_relu_unsupported_reason({70000, 8, 64, 8}), "");
  EXPECT_THROW(scaffold::cuda::plan_group_norm_relu({1, 8, 64, 16}, 132), std::invalid_argument);
}

TEST(GroupNormReluPlan, ChunksCoverEveryVoxel) {
  const std::vector<GroupNormReluShape> shapes = {
      {1, 1, 8, 1}, {1, 128 * 128 * 128, 64, 8}, {3, 512, 1024, 8}, {2, 35937, 96, 4}, {1, 7, 2048, 32}};
  for (const GroupNormReluShape& shape : shapes) {
    for (const int multiprocessors : {1, 132}) {
      const GroupNormReluPlan plan = scaffold::cuda::plan_group_norm_relu(shape, multiprocessors);
      const std::int64_t vectors_per_row = shape.channels / 8;
      SCOPED_TRACE("C=" + std::to_string(shape.channels) + " S=" + std::to_string(shape.spatial) +
                   " SMs=" + std::to_string(multiprocessors));
      EXPECT_EQ(plan.threads_per_block % vectors_per_row, 0);
      EXPECT_LE(plan.threads_per_block, 256);
      EXPECT_GE(plan.chunks, 1);
      EXPECT_GE(plan.chunks * plan.rows_per_chunk, shape.spatial);
      EXPECT_LT((plan.chunks - 1) * plan.rows_per_chunk, shape.spatial);
      EXPECT_GE(plan.elementwise_blocks, 1);
      const std::size_t forward_floats = 2 * shape.batch * shape.groups * plan.chunks + 2 * shape.batch * shape.channels;
      EXPECT_GE(plan.forward_workspace_bytes, forward_floats * sizeof(float));
      const std::size_t backward_floats =
          2 * shape.batch * plan.chunks * shape.channels + 2 * shape.batch * shape.channels + 2 * shape.batch * shape.groups;
      EXPECT_GE(plan.backward_workspace_bytes, backward_floats * sizeof(float));
    }
  }
}

TEST(GroupNormReluPlan, RejectsMisalignedActivations) {
  // The alignment check runs before any CUDA call, so no device is needed.
  const GroupNormReluPlan plan = scaffold::cuda::plan_group_norm_relu({1, 8, 64, 8}, 1);
  alignas(16) static unsigned char storage[64];
  const auto* misaligned = reinterpret_cast<const __nv_bfloat16*>(storage + 2);
  EXPECT_THROW(scaffold::cuda::group_norm_relu_forward(plan, misaligned, nullptr, nullptr, 1e-5f, nullptr, nullptr,
                                                       nullptr, nullptr, nullptr),
               std::invalid_argument);
}

class GroupNormReluKernels : public ::testing::TestWithParam<GroupNormReluShape> {};

TEST_P(GroupNormReluKernels, MatchFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem(GetParam(), 17);
  const GpuResult gpu = run_on_gpu(p);
  const GroupNormReluShape& s = p.shape;

  // Statistics against the two-pass float64 reference.
  const Stats stats = reference_stats(p);
  for (std::size_t i = 0; i < stats.mean.size(); ++i) {
    const double spread = 1.0 / stats.rstd[i];
    EXPECT_NEAR(gpu.mean[i], stats.mean[i], 1e-5 * (std::abs(stats.mean[i]) + spread)) << "mean at " << i;
    EXPECT_NEAR(gpu.rstd[i], stats.rstd[i], 1e-4 * stats.rstd[i]) << "rstd at " << i;
  }

  // y against relu(z) in float64.
  const std::vector<double> z = reference_z(p, stats);
  int y_failures = 0;
  for (std::size_t i = 0; i < z.size() && y_failures < 10; ++i) {
    const double expected = std::max(z[i], 0.0);
    const double tolerance = kBf16Relative * std::abs(expected) + 1e-3;
    if (std::abs(gpu.y[i] - expected) > tolerance) {
      ++y_failures;
      ADD_FAILURE() << "y at " << i << ": " << gpu.y[i] << " vs " << expected;
    }
  }

  // Gradients against the float64 backward with the kernels' own mask and
  // statistics, so that a z within rounding of 0 cannot flip between the two.
  const Stats gpu_stats{{gpu.mean.begin(), gpu.mean.end()}, {gpu.rstd.begin(), gpu.rstd.end()}};
  const Gradients grads = reference_backward(p, gpu_stats, kernel_mask(p, gpu.mean, gpu.rstd));
  const double dx_floor = 1e-3 * max_abs(grads.dx);
  int dx_failures = 0;
  for (std::size_t i = 0; i < grads.dx.size() && dx_failures < 10; ++i) {
    const double tolerance = kBf16Relative * std::abs(grads.dx[i]) + dx_floor;
    if (std::abs(gpu.dx[i] - grads.dx[i]) > tolerance) {
      ++dx_failures;
      ADD_FAILURE() << "dx at " << i << ": " << gpu.dx[i] << " vs " << grads.dx[i];
    }
  }
  for (std::int64_t c = 0; c < s.channels; ++c) {
    EXPECT_NEAR(gpu.dbeta[c], grads.dbeta[c], 1e-5 * grads.dbeta_scale[c] + 1e-6) << "dbeta at " << c;
    EXPECT_NEAR(gpu.dgamma[c], grads.dgamma[c], 1e-5 * grads.dgamma_scale[c] + 1e-6) << "dgamma at " << c;
  }
}

// Shapes {N, S, C, G}: the U-Net's narrowest level (64 channels, 8 groups)
// with many chunks, a non-power-of-two channel count, the deepest widths,
// the largest supported channel count and a single voxel.
INSTANTIATE_TEST_SUITE_P(Shapes, GroupNormReluKernels,
                         ::testing::Values(GroupNormReluShape{2, 120, 64, 8}, GroupNormReluShape{1, 35937, 64, 8},
                                           GroupNormReluShape{1, 1683, 96, 4}, GroupNormReluShape{3, 512, 1024, 8},
                                           GroupNormReluShape{2, 3, 2048, 32}, GroupNormReluShape{1, 1, 8, 1}),
                         [](const ::testing::TestParamInfo<GroupNormReluShape>& info) {
                           const GroupNormReluShape& s = info.param;
                           return "N" + std::to_string(s.batch) + "_S" + std::to_string(s.spatial) + "_C" +
                                  std::to_string(s.channels) + "_G" + std::to_string(s.groups);
                         });

TEST(GroupNormReluKernelsNumerics, LargeMeanKeepsVariance) {
  SKIP_WITHOUT_GPU();
  // Mean 100 and spread 4: E[x^2] - E[x]^2 in float32 would lose about three
  // digits, and the shifted sums must not.
  const Problem p = make_problem({1, 4096, 64, 8}, 5, 100.0, 4.0);
  const GpuResult gpu = run_on_gpu(p);
  const Stats stats = reference_stats(p);
  for (std::size_t i = 0; i < stats.rstd.size(); ++i) {
    EXPECT_NEAR(gpu.mean[i], stats.mean[i], 1e-5 * std::abs(stats.mean[i])) << "mean at " << i;
    EXPECT_NEAR(gpu.rstd[i], stats.rstd[i], 1e-4 * stats.rstd[i]) << "rstd at " << i;
  }
}

TEST(GroupNormReluKernelsNumerics, NanStaysInItsGroup) {
  SKIP_WITHOUT_GPU();
  Problem p = make_problem({1, 64, 16, 2}, 9);
  p.x[p.at(0, 10, 3)] = std::numeric_limits<double>::quiet_NaN();  // channel 3 is in group 0
  const GpuResult gpu = run_on_gpu(p);
  EXPECT_TRUE(std::isnan(gpu.mean[0]));
  EXPECT_FALSE(std::isnan(gpu.mean[1]));
  for (std::int64_t v = 0; v < p.shape.spatial; ++v) {
    EXPECT_TRUE(std::isnan(gpu.y[p.at(0, v, 0)])) << "group 0, voxel " << v;
    EXPECT_FALSE(std::isnan(gpu.y[p.at(0, v, 8)])) << "group 1, voxel " << v;
  }
}

}  // namespace
