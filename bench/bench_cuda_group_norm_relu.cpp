// Times GroupNorm + ReLU forward and backward on a CUDA GPU at the activation
// shapes of the U-Net at one problem scale. It compares LibTorch's group_norm
// and relu under bf16 autocast, which is what the U-Net runs today (group_norm
// then computes in float32), with the fused bf16 kernels of src/cuda. Built
// only in CUDA builds.
//
// Prints one line per U-Net level: the median time per forward + backward
// pass of each path, the speed-up, the fused path's effective bandwidth
// (16 bytes moved per element: 3 bf16 passes forward, 5 backward), and the
// largest difference between the two outputs.
//
// Usage: bench_cuda_group_norm_relu [--scale S] [--batch N] [--iterations N]
// Defaults: scale 7 (128^3 volumes, channels 64 to 1024), batch 1, 20 iterations.
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "cuda/group_norm_relu.hpp"
#include "cuda_autocast.hpp"

namespace {

constexpr std::int64_t kGroups = 8;
constexpr double kEps = 1e-5;
constexpr int kWarmup = 3;
constexpr int kBottleneckDim = 3;

struct Options {
  int scale = 7;
  int batch = 1;
  int iterations = 20;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr,
               "bench_cuda_group_norm_relu: %s\nusage: bench_cuda_group_norm_relu [--scale S] [--batch N] "
               "[--iterations N]\n",
               message.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) {
      usage_error(arg + " needs a value");
    }
    const std::string text = argv[++i];
    char* end = nullptr;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (end == text.c_str() || *end != '\0' || value < 1 || value > 100000) {
      usage_error(arg + " takes a positive integer, got '" + text + "'");
    }
    if (arg == "--scale") {
      options.scale = static_cast<int>(value);
    } else if (arg == "--batch") {
      options.batch = static_cast<int>(value);
    } else if (arg == "--iterations") {
      options.iterations = static_cast<int>(value);
    } else {
      usage_error("unknown option '" + arg + "'");
    }
  }
  if (options.scale <= kBottleneckDim) {
    usage_error("--scale must be above " + std::to_string(kBottleneckDim));
  }
  return options;
}

// Median seconds of `iterations` synchronized runs after kWarmup untimed ones.
double median_seconds(int iterations, const std::function<void()>& run) {
  for (int i = 0; i < kWarmup; ++i) {
    run();
  }
  torch::cuda::synchronize();
  std::vector<double> seconds;
  for (int i = 0; i < iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    torch::cuda::synchronize();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

void run_level(const Options& options, std::int64_t channels, std::int64_t edge) {
  const torch::TensorOptions cuda = torch::TensorOptions(torch::kCUDA);
  const torch::Tensor x = torch::randn({options.batch, channels, edge, edge, edge}, cuda)
                              .to(torch::kBFloat16)
                              .contiguous(torch::MemoryFormat::ChannelsLast3d)
                              .requires_grad_(true);
  const torch::Tensor dy = torch::randn_like(x);
  const torch::Tensor weight = torch::ones({channels}, cuda).requires_grad_(true);
  const torch::Tensor bias = torch::zeros({channels}, cuda).requires_grad_(true);

  // The U-Net's current path: GroupNorm (float32 under autocast), then ReLU.
  const torch::Tensor dy_float = dy.to(torch::kFloat);
  torch::Tensor unfused_y;
  const double unfused_s = median_seconds(options.iterations, [&] {
    {
      scaffold::bench::CudaAutocast autocast(true);
      unfused_y = torch::relu(torch::group_norm(x, kGroups, weight, bias, kEps));
    }
    unfused_y.backward(unfused_y.scalar_type() == torch::kFloat ? dy_float : dy);
  });

  torch::Tensor fused_y;
  const double fused_s = median_seconds(options.iterations, [&] {
    fused_y = scaffold::cuda::fused_group_norm_relu(x, weight, bias, kGroups, kEps);
    fused_y.backward(dy);
  });

  const double elements = static_cast<double>(x.numel());
  const double fused_gb_per_s = 16.0 * elements / fused_s / 1e9;
  const double max_difference = (fused_y.to(torch::kFloat) - unfused_y.to(torch::kFloat)).abs().max().item<double>();
  std::printf("channels=%lld edge=%lld elements=%.0f unfused_ms=%.3f fused_ms=%.3f speedup=%.2f "
              "fused_effective_gb_per_s=%.0f max_abs_difference=%.4g\n",
              static_cast<long long>(channels), static_cast<long long>(edge), elements, unfused_s * 1e3,
              fused_s * 1e3, unfused_s / fused_s, fused_gb_per_s, max_difference);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "bench_cuda_group_norm_relu: LibTorch sees no CUDA device\n");
    return 1;
  }
  std::printf("bench_cuda_group_norm_relu: scale %d, batch %d, %d iterations, forward + backward per iteration\n",
              options.scale, options.batch, options.iterations);

  // Level l of the U-Net: 64 * 2^l channels on an edge of 2^(scale - l) voxels.
  const int layers = options.scale - kBottleneckDim;
  for (int level = 0; level <= layers; ++level) {
    run_level(options, std::int64_t{64} << level, std::int64_t{1} << (options.scale - level));
  }
  return 0;
}
