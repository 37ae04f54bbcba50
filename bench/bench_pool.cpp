// 2x2x2 max pooling with stride 2 on CPU: scaffold's max_pool3d_2x2x2 on a
// ChannelsLast3d input against torch::max_pool3d(x, 2, 2) on the same
// ChannelsLast3d input and on a plain contiguous copy of it.
//
// Shapes [1, C, S, S, S] of the U-Net's pooling inputs at batch 1: C = 64 at
// S = 32 and C = 128 at S = 16. Each benchmark times one pass:
//   forward            with autograd recording, as in training (ours also
//                      writes its uint8 index)
//   forward_inference  under NoGradGuard (ours writes no index)
//   backward           the input gradient of one retained forward
//
// bytes_per_second is an effective bandwidth: the traffic of our passes
// divided by the time, for all three implementations, so the rates compare
// like for like. With B the input's bytes, forward reads x and writes y and
// the index, B * (1 + 1/8 + 1/32). Inference reads x and writes y,
// B * (1 + 1/8). Backward reads dy and the index and writes dx,
// B * (1/8 + 1/32 + 1). LibTorch moves more than that (int64 indices, and a
// layout copy of ChannelsLast3d input), so its figure is not its real
// bandwidth. After the table the program prints LibTorch time / our time for
// each shape and pass.
//
// All implementations allocate their outputs in every iteration. As in
// bench_norm, main() makes malloc serve blocks up to 64 MiB from the heap and
// never trim it, so the times exclude the page faults of fresh allocations.
//
// Usage: OMP_NUM_THREADS=2 bench_pool --benchmark_repetitions=5 [other Google Benchmark flags]
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
#include "nn/max_pool.hpp"

namespace {

enum class Implementation { ours, libtorch_channels_last, libtorch_contiguous };
enum class Pass { forward, forward_inference, backward };

const char* implementation_name(Implementation implementation) {
  switch (implementation) {
    case Implementation::ours:
      return "ours";
    case Implementation::libtorch_channels_last:
      return "libtorch_cl";
    case Implementation::libtorch_contiguous:
      break;
  }
  return "libtorch_contig";
}

const char* pass_name(Pass pass) {
  switch (pass) {
    case Pass::forward:
      return "forward";
    case Pass::forward_inference:
      return "forward_inference";
    case Pass::backward:
      break;
  }
  return "backward";
}

// Bytes our kernels move per pass, in units of 1/32 of the input's bytes.
std::int64_t traffic_in_32nds(Pass pass) {
  switch (pass) {
    case Pass::forward:
      return 32 + 4 + 1;
    case Pass::forward_inference:
      return 32 + 4;
    case Pass::backward:
      break;
  }
  return 4 + 1 + 32;
}

torch::Tensor forward(Implementation implementation, const torch::Tensor& x) {
  if (implementation == Implementation::ours) {
    return scaffold::max_pool3d_2x2x2(x);
  }
  return torch::max_pool3d(x, 2, 2);
}

void run_benchmark(benchmark::State& state, Implementation implementation, Pass pass, std::int64_t channels,
                   std::int64_t size) {
  // x: [1, C, S, S, S], ChannelsLast3d except for libtorch_contiguous
  torch::manual_seed(0);
  const torch::Tensor values = torch::randn({1, channels, size, size, size});
  const auto memory_format = implementation == Implementation::libtorch_contiguous
                                 ? torch::MemoryFormat::Contiguous
                                 : torch::MemoryFormat::ChannelsLast3d;
  const torch::Tensor x = values.contiguous(memory_format).requires_grad_(true);

  // The backward-only benchmark runs the backward pass of one forward again
  // and again, so it keeps the graph. grad_output has the output's layout.
  const torch::Tensor retained_output = pass == Pass::backward ? forward(implementation, x) : torch::Tensor();
  const torch::Tensor grad_output =
      pass == Pass::backward ? torch::randn_like(retained_output) : torch::Tensor();

  for (auto _ : state) {
    if (pass == Pass::forward) {
      benchmark::DoNotOptimize(forward(implementation, x));
    } else if (pass == Pass::forward_inference) {
      torch::NoGradGuard no_grad;
      benchmark::DoNotOptimize(forward(implementation, x));
    } else {
      benchmark::DoNotOptimize(torch::autograd::grad({retained_output}, {x}, {grad_output}, /*retain_graph=*/true));
    }
  }

  const std::int64_t input_bytes = x.numel() * static_cast<std::int64_t>(sizeof(float));
  state.SetBytesProcessed(state.iterations() * input_bytes * traffic_in_32nds(pass) / 32);
}

std::string benchmark_name(Implementation implementation, Pass pass, std::int64_t channels, std::int64_t size) {
  return std::string(implementation_name(implementation)) + "/" + pass_name(pass) +
         "/C=" + std::to_string(channels) + "/S=" + std::to_string(size);
}

// Console output plus, at the end, LibTorch time / our time per shape and
// pass, from the minimum over repetitions.
class RatioReporter : public scaffold_bench::MinTimeReporter {
 public:
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nLibTorch time / our time (greater than 1: ours is faster)\n");
    std::printf("  %-36s %12s %16s\n", "pass/shape", "libtorch_cl", "libtorch_contig");
    const std::string prefix = implementation_name(Implementation::ours);
    for (const auto& [name, our_time] : real_times_) {
      if (name.rfind(prefix + "/", 0) != 0) {
        continue;
      }
      const std::string rest = name.substr(prefix.size());
      const auto channels_last = real_times_.find(implementation_name(Implementation::libtorch_channels_last) + rest);
      const auto contiguous = real_times_.find(implementation_name(Implementation::libtorch_contiguous) + rest);
      if (channels_last != real_times_.end() && contiguous != real_times_.end()) {
        // Names end in "/real_time" because of UseRealTime().
        std::string label = rest.substr(1);
        label = label.substr(0, label.rfind("/real_time"));
        std::printf("  %-36s %12.2f %16.2f\n", label.c_str(), channels_last->second / our_time,
                    contiguous->second / our_time);
      }
    }
  }

};

}  // namespace

int main(int argc, char** argv) {
  // 64 MiB is eight times the largest tensor here.
  if (mallopt(M_MMAP_THRESHOLD, 64 << 20) != 1 || mallopt(M_TRIM_THRESHOLD, 1 << 30) != 1) {
    std::fprintf(stderr, "bench_pool: mallopt failed, so times may include page faults\n");
  }

  struct Shape {
    std::int64_t channels;
    std::int64_t size;
  };
  const std::vector<Shape> shapes = {{64, 32}, {128, 16}};
  for (const Pass pass : {Pass::forward, Pass::forward_inference, Pass::backward}) {
    for (const Shape& shape : shapes) {
      for (const Implementation implementation : {Implementation::libtorch_contiguous,
                                                  Implementation::libtorch_channels_last, Implementation::ours}) {
        benchmark::RegisterBenchmark(benchmark_name(implementation, pass, shape.channels, shape.size).c_str(),
                                     run_benchmark, implementation, pass, shape.channels, shape.size)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
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
