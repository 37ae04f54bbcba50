// GroupNorm + ReLU on CPU: scaffold's fused group_norm_relu against LibTorch's
// torch::group_norm followed by in-place torch::relu_, as the U-Net's
// LibTorch path runs them, at batch 1 with 8 groups (group_norm_groups in the
// reference configuration).
//
// Shapes [1, C, S, S, S] of the U-Net's GroupNorm inputs with
// unet_bottleneck_dim 2: C = 64 at S = 16 (problem scale 4, top level), and
// C = 64 at S = 32 and C = 128 at S = 16 (scale 5, top two levels). Each
// benchmark times forward alone, backward alone (gradients for input, weight
// and bias), or both.
//
// The *_channels_last_* benchmarks run the scale-5 shapes with x and dy in
// ChannelsLast3d, as the U-Net's oneDNN path keeps its activations: the fused
// channels-last kernels against LibTorch on the same ChannelsLast3d tensors.
//
// bytes_per_second is an effective bandwidth: the traffic of the fused passes
// divided by the time, for both implementations, so the two rates compare
// like for like. Forward reads x twice and writes y, 3 tensors. Backward
// reads x and dy twice each and writes dx, 5 tensors. LibTorch moves more
// bytes than that, so its figure is not its real bandwidth. After the table
// the program prints LibTorch time / fused time for each shape, and fused
// contiguous time / fused channels-last time.
//
// Both implementations allocate their outputs in every iteration. glibc's
// malloc would hand 8 MiB blocks back to the kernel or keep them depending on
// what ran before in the process, so page faults would add a few milliseconds
// to some benchmarks and not others. main() therefore makes malloc serve
// blocks up to 32 MiB from the heap and never trim it, and the times exclude
// the page faults of fresh allocations.
//
// Usage: OMP_NUM_THREADS=2 bench_norm --benchmark_repetitions=5 [other Google Benchmark flags]
// The intra-op thread count is LibTorch's default, which follows
// OMP_NUM_THREADS.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "min_time_reporter.hpp"
#include "nn/groupnorm_relu.hpp"

namespace {

constexpr std::int64_t kGroups = 8;
constexpr double kEps = 1e-5;

enum class Implementation { fused, libtorch };
enum class Layout { contiguous, channels_last };
enum class Pass { forward, backward, forward_backward };

torch::Tensor forward(Implementation implementation, const torch::Tensor& x, const torch::Tensor& weight,
                      const torch::Tensor& bias) {
  if (implementation == Implementation::fused) {
    return scaffold::group_norm_relu(x, kGroups, weight, bias, kEps);
  }
  torch::Tensor normalized = torch::group_norm(x, kGroups, weight, bias, kEps);
  return normalized.relu_();
}

// Activation-sized tensors that the fused passes read or write.
std::int64_t tensors_moved(Pass pass) {
  switch (pass) {
    case Pass::forward:
      return 3;
    case Pass::backward:
      return 5;
    case Pass::forward_backward:
      break;
  }
  return 8;
}

const char* pass_suffix(Pass pass) {
  switch (pass) {
    case Pass::forward:
      return "_forward";
    case Pass::backward:
      return "_backward";
    case Pass::forward_backward:
      break;
  }
  return "_forward_backward";
}

void run_benchmark(benchmark::State& state, Implementation implementation, Layout layout, Pass pass,
                   std::int64_t channels, std::int64_t size) {
  // x, dy: [1, C, S, S, S], contiguous or ChannelsLast3d; weight, bias: [C]
  const torch::MemoryFormat format =
      layout == Layout::channels_last ? torch::MemoryFormat::ChannelsLast3d : torch::MemoryFormat::Contiguous;
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({1, channels, size, size, size}).contiguous(format).requires_grad_(true);
  const torch::Tensor weight = torch::empty({channels}).uniform_(0.5, 1.5).requires_grad_(true);
  const torch::Tensor bias = torch::empty({channels}).uniform_(-0.5, 0.5).requires_grad_(true);
  const torch::Tensor grad_output = torch::randn(x.sizes()).contiguous(format);

  // The backward-only benchmark runs the backward pass of one forward again
  // and again, so it keeps the graph.
  const torch::Tensor retained_output = pass == Pass::backward ? forward(implementation, x, weight, bias)
                                                               : torch::Tensor();

  for (auto _ : state) {
    if (pass == Pass::forward) {
      torch::NoGradGuard no_grad;
      benchmark::DoNotOptimize(forward(implementation, x, weight, bias));
    } else if (pass == Pass::backward) {
      benchmark::DoNotOptimize(torch::autograd::grad({retained_output}, {x, weight, bias}, {grad_output},
                                                     /*retain_graph=*/true));
    } else {
      const torch::Tensor y = forward(implementation, x, weight, bias);
      benchmark::DoNotOptimize(torch::autograd::grad({y}, {x, weight, bias}, {grad_output}));
    }
  }

  const std::int64_t tensor_bytes = x.numel() * static_cast<std::int64_t>(sizeof(float));
  state.SetBytesProcessed(state.iterations() * tensors_moved(pass) * tensor_bytes);
}

std::string benchmark_name(Implementation implementation, Layout layout, Pass pass, std::int64_t channels,
                           std::int64_t size) {
  return std::string(implementation == Implementation::fused ? "fused" : "libtorch") +
         (layout == Layout::channels_last ? "_channels_last" : "") + pass_suffix(pass) +
         "/C=" + std::to_string(channels) + "/S=" + std::to_string(size);
}

constexpr const char* kChannelsLastPrefix = "fused_channels_last";

// Console output plus, at the end, LibTorch time / fused time per shape and
// pass, and fused contiguous time / fused channels-last time, from the
// minimum over repetitions.
class RatioReporter : public scaffold_bench::MinTimeReporter {
 public:
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nLibTorch time / fused time (greater than 1: fused is faster)\n");
    for (const auto& [name, fused_time] : real_times_) {
      if (name.rfind("fused", 0) != 0) {
        continue;
      }
      const std::string libtorch_name = "libtorch" + name.substr(5);
      const auto libtorch = real_times_.find(libtorch_name);
      if (libtorch != real_times_.end()) {
        std::printf("  %-40s %6.2f\n", name.substr(6).c_str(), libtorch->second / fused_time);
      }
    }

    std::printf("\nFused contiguous time / fused channels-last time (greater than 1: channels-last is faster)\n");
    const std::string prefix = kChannelsLastPrefix;
    for (const auto& [name, channels_last_time] : real_times_) {
      if (name.rfind(prefix, 0) != 0) {
        continue;
      }
      const auto contiguous = real_times_.find("fused" + name.substr(prefix.size()));
      if (contiguous != real_times_.end()) {
        std::printf("  %-40s %6.2f\n", name.substr(prefix.size() + 1).c_str(), contiguous->second / channels_last_time);
      }
    }
  }

};

}  // namespace

int main(int argc, char** argv) {
  // 32 MiB is four times the largest tensor here.
  if (mallopt(M_MMAP_THRESHOLD, 32 << 20) != 1 || mallopt(M_TRIM_THRESHOLD, 1 << 30) != 1) {
    std::fprintf(stderr, "bench_norm: mallopt failed, so times may include page faults\n");
  }

  struct Shape {
    std::int64_t channels;
    std::int64_t size;
  };
  struct Case {
    Layout layout;
    std::vector<Shape> shapes;
  };
  const std::vector<Case> cases = {{Layout::contiguous, {{64, 16}, {128, 16}, {64, 32}}},
                                   {Layout::channels_last, {{128, 16}, {64, 32}}}};
  for (const Case& layout_case : cases) {
    for (const Pass pass : {Pass::forward, Pass::backward, Pass::forward_backward}) {
      for (const Shape& shape : layout_case.shapes) {
        for (const Implementation implementation : {Implementation::libtorch, Implementation::fused}) {
          benchmark::RegisterBenchmark(
              benchmark_name(implementation, layout_case.layout, pass, shape.channels, shape.size).c_str(),
              run_benchmark, implementation, layout_case.layout, pass, shape.channels, shape.size)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }

  benchmark::AddCustomContext("torch_intra_op_threads", std::to_string(torch::get_num_threads()));
  benchmark::AddCustomContext("cpu_avx512f", __builtin_cpu_supports("avx512f") ? "yes" : "no");
  benchmark::AddCustomContext("cpu_avx2", __builtin_cpu_supports("avx2") ? "yes" : "no");

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
