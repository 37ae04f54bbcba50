// Times one full U-Net training step (forward, loss, backward, gradient
// clipping, Adam step) at several problem scales and reports the analytic
// convolution FLOPs per step and the rate achieved.
//
// Prints the median step time over the timed steps, the fastest step, the
// mean time of each phase, the share of the FMA peak measured at the start of
// the same run, and the process's peak resident memory so far.
//
// Usage: bench_step [--threads N] [--batch N] [--steps N] [--channels-last]
//                   [--fresh-mmap] [--backend both|libtorch|onednn]
//                   [--scale S --layers L]
// --fresh-mmap leaves glibc's default of mapping every large buffer afresh,
// instead of the trainer's policy of keeping freed memory for reuse.
// Without --scale it runs scale 4 (L = 1 and L = 2), 5 (L = 2) and 6 (L = 3).
// With --backend both (the default) each case runs with stock LibTorch
// (its convolutions, GroupNorm, ReLU, max pool and Adam), then with the
// trainer's CPU path (oneDNN convolutions, fused kernels, FusedAdam), and
// prints the ratio. The malloc policy applies to both cases of a run.
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fma_peak.hpp"
#include "nn/unet.hpp"
#include "train/loss.hpp"
#include "train/memory_policy.hpp"
#include "train/schedule.hpp"

namespace {

constexpr int kInChannels = 3;
constexpr int kClasses = 6;  // 5 fractal categories + background, the reference default
constexpr int kGroupNormGroups = 8;

struct BenchCase {
  int scale;   // volume edge = 2^scale voxels
  int layers;  // U-Net depth
};

struct BenchOptions {
  int threads = 2;
  int batch = 1;
  int steps = 0;  // 0: pick per scale
  bool channels_last = false;
  bool keep_freed_memory = true;  // the trainer's malloc policy (train/memory_policy.hpp)
  std::vector<scaffold::ConvBackend> backends = {scaffold::ConvBackend::libtorch, scaffold::ConvBackend::onednn};
  double peak_gflops = 0;  // measured at start
  std::vector<BenchCase> cases = {{4, 1}, {4, 2}, {5, 2}, {6, 3}};
};

// Forward multiply-add FLOPs (2 per MAC) of every convolution in the U-Net
// for one sample with an edge of `edge` voxels.
double forward_conv_flops(int edge, int layers) {
  double flops = 0;
  const auto conv = [&flops](double cin, double cout, double kernel_volume, double voxels) {
    flops += 2.0 * cin * cout * kernel_volume * voxels;
  };
  const auto voxels_at = [edge](int level) {
    const double side = static_cast<double>(edge >> level);
    return side * side * side;
  };

  // Encoder: inc at level 0, then Down i at level i.
  conv(kInChannels, 64, 27, voxels_at(0));
  conv(64, 64, 27, voxels_at(0));
  for (int level = 1; level <= layers; ++level) {
    const double cin = 64 << (level - 1);
    conv(cin, 2 * cin, 27, voxels_at(level));
    conv(2 * cin, 2 * cin, 27, voxels_at(level));
  }

  // Decoder: the transposed conv maps every deep voxel through a 2^3 kernel,
  // then DoubleConv(cin -> cin / 2) at the finer level.
  for (int level = layers; level >= 1; --level) {
    const double cin = 64 << level;
    conv(cin, cin / 2, 8, voxels_at(level));
    conv(cin, cin / 2, 27, voxels_at(level - 1));
    conv(cin / 2, cin / 2, 27, voxels_at(level - 1));
  }

  conv(64, kClasses, 1, voxels_at(0));
  return flops;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct StepTimes {
  double forward_s = 0;
  double backward_s = 0;  // loss + backward
  double clip_s = 0;
  double adam_s = 0;  // Adam step + clearing gradients
};

// Peak resident set size of this process so far, in MiB.
double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Returns the median step time in seconds.
double run_case(const BenchCase& bench_case, const BenchOptions& options, scaffold::ConvBackend backend) {
  const int edge = 1 << bench_case.scale;
  // Default step counts keep each case within about a minute on 2 cores.
  int steps = options.steps;
  if (steps == 0) {
    steps = 3;
    if (bench_case.scale <= 4) {
      steps = 20;
    } else if (bench_case.scale == 5) {
      steps = 8;
    }
  }

  torch::manual_seed(0);
  scaffold::UNet net(kInChannels, kClasses, bench_case.layers, kGroupNormGroups, backend);
  const auto memory_format = options.channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  if (options.channels_last) {
    // Module::to has no memory-format overload in LibTorch 1.13, so convert
    // each 5-D weight in place.
    torch::NoGradGuard no_grad;
    for (auto& parameter : net->parameters()) {
      if (parameter.dim() == 5) {
        parameter.set_data(parameter.contiguous(memory_format));
      }
    }
  }
  // The LibTorch case is stock LibTorch throughout, its Adam included; the
  // oneDNN case uses the trainer's optimizer, FusedAdam.
  std::unique_ptr<torch::optim::Optimizer> optimizer =
      backend == scaffold::ConvBackend::libtorch
          ? std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-3))
          : scaffold::make_optimizer("ADAM", net->parameters(), 1e-3);
  const torch::Tensor class_weights = scaffold::class_weights_from_counts(9, 1, kClasses);

  // input: [N, 3, D, H, W] uniform in [0, 1)
  // target: [N, D, H, W] with about 10% foreground voxels
  const torch::Tensor input = torch::rand({options.batch, kInChannels, edge, edge, edge}).contiguous(memory_format);
  const torch::Tensor foreground = torch::randint(1, kClasses, {options.batch, edge, edge, edge}, torch::kLong);
  const torch::Tensor target = torch::where(torch::rand({options.batch, edge, edge, edge}) < 0.1, foreground,
                                            torch::zeros_like(foreground));

  const auto train_step = [&](StepTimes* times) {
    auto start = std::chrono::steady_clock::now();
    const torch::Tensor logits = net->forward(input);
    const double forward_s = seconds_since(start);

    start = std::chrono::steady_clock::now();
    const auto terms = scaffold::segmentation_loss(logits, target, class_weights);
    terms.loss.backward();
    const double backward_s = seconds_since(start);

    start = std::chrono::steady_clock::now();
    scaffold::clip_grad_norm(net->parameters(), 1.0);
    const double clip_s = seconds_since(start);

    // Clearing gradients to undefined matches zero_grad(set_to_none=True).
    start = std::chrono::steady_clock::now();
    optimizer->step();
    for (auto& parameter : net->parameters()) {
      parameter.mutable_grad().reset();
    }
    const double adam_s = seconds_since(start);

    if (times != nullptr) {
      times->forward_s += forward_s;
      times->backward_s += backward_s;
      times->clip_s += clip_s;
      times->adam_s += adam_s;
    }
  };

  // Two untimed steps let LibTorch and oneDNN allocate buffers and pick kernels.
  train_step(nullptr);
  train_step(nullptr);

  // The median step time resists the load spikes of a shared machine, and
  // the fastest step shows what the code reaches undisturbed.
  StepTimes times;
  std::vector<double> step_times_s;
  for (int i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    train_step(&times);
    step_times_s.push_back(seconds_since(start));
  }
  std::sort(step_times_s.begin(), step_times_s.end());
  const double step_s = step_times_s[step_times_s.size() / 2];
  const double fastest_step_s = step_times_s.front();

  const double train_flops = 3.0 * forward_conv_flops(edge, bench_case.layers) * options.batch;
  const double rate = train_flops * 1e-9 / step_s;
  std::printf(
      "%s scale=%d edge=%d layers=%d batch=%d params=%lld steps=%d: median %.1f ms/step, fastest %.1f ms "
      "(mean fwd %.1f, loss+bwd %.1f, clip %.1f, adam %.1f) %.2f samples/s, conv %.2f GFLOP/step, "
      "%.1f GFLOP/s (%.0f%% of peak), peak RSS %.0f MiB\n",
      backend == scaffold::ConvBackend::libtorch ? "libtorch" : "onednn  ", bench_case.scale, edge,
      bench_case.layers, options.batch,
      static_cast<long long>(scaffold::count_parameters(net)), steps, 1e3 * step_s, 1e3 * fastest_step_s,
      1e3 * times.forward_s / steps,
      1e3 * times.backward_s / steps, 1e3 * times.clip_s / steps, 1e3 * times.adam_s / steps, options.batch / step_s, train_flops * 1e-9,
      rate, 100.0 * rate / options.peak_gflops, peak_rss_mib());
  std::fflush(stdout);
  return step_s;
}

int parse_int(const char* flag, const char* value) {
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || parsed < 1) {
    std::fprintf(stderr, "invalid value '%s' for %s: expected a positive integer\n", value, flag);
    std::exit(2);
  }
  return static_cast<int>(parsed);
}

BenchOptions parse_options(int argc, char** argv) {
  BenchOptions options;
  int scale = 0;
  int layers = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--channels-last") {
      options.channels_last = true;
      continue;
    }
    if (flag == "--fresh-mmap") {
      options.keep_freed_memory = false;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "missing value for %s\n", flag.c_str());
      std::exit(2);
    }
    const char* value = argv[++i];
    if (flag == "--threads") {
      options.threads = parse_int("--threads", value);
    } else if (flag == "--batch") {
      options.batch = parse_int("--batch", value);
    } else if (flag == "--steps") {
      options.steps = parse_int("--steps", value);
    } else if (flag == "--scale") {
      scale = parse_int("--scale", value);
    } else if (flag == "--layers") {
      layers = parse_int("--layers", value);
    } else if (flag == "--backend") {
      const std::string backend = value;
      if (backend == "libtorch") {
        options.backends = {scaffold::ConvBackend::libtorch};
      } else if (backend == "onednn") {
        options.backends = {scaffold::ConvBackend::onednn};
      } else if (backend != "both") {
        std::fprintf(stderr, "invalid value '%s' for --backend: expected both, libtorch or onednn\n", value);
        std::exit(2);
      }
    } else {
      std::fprintf(stderr,
                   "unknown option %s; use --threads N, --batch N, --steps N, --channels-last, --fresh-mmap, "
                   "--backend both|libtorch|onednn, --scale S --layers L\n",
                   flag.c_str());
      std::exit(2);
    }
  }
  if (scale > 0) {
    options.cases = {{scale, layers > 0 ? layers : scale - 3}};
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  BenchOptions options = parse_options(argc, argv);
  torch::set_num_threads(options.threads);
  if (options.keep_freed_memory) {
    scaffold::keep_freed_memory_for_reuse();
  }
  options.peak_gflops = scaffold_bench::best_fma_peak_gflops(options.threads);
  std::printf(
      "LibTorch %s, %d threads, %s input and LibTorch-path layout (the oneDNN path is channels-last inside), "
      "malloc %s, FMA peak %.1f GFLOP/s (register-only loop, %s)\n",
      TORCH_VERSION, torch::get_num_threads(), options.channels_last ? "channels_last_3d" : "contiguous NCDHW",
      options.keep_freed_memory ? "keeps freed memory" : "maps large blocks afresh", options.peak_gflops,
      __builtin_cpu_supports("avx512f") ? "AVX-512" : "AVX2");

  for (const auto& bench_case : options.cases) {
    try {
      std::vector<double> step_s;
      for (const scaffold::ConvBackend backend : options.backends) {
        step_s.push_back(run_case(bench_case, options, backend));
      }
      if (step_s.size() == 2) {
        std::printf("scale=%d layers=%d: oneDNN step is %.2fx faster than LibTorch's\n", bench_case.scale,
                    bench_case.layers, step_s[0] / step_s[1]);
      }
    } catch (const std::exception& error) {
      std::fprintf(stderr, "scale=%d layers=%d failed: %s\n", bench_case.scale, bench_case.layers, error.what());
      return 1;
    }
  }
  return 0;
}
