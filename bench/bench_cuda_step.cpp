// Times one U-Net training step on a CUDA GPU the way the reference trains:
// bf16 autocast, channels-last 3D activations and convolution weights, the
// weighted cross-entropy + soft Dice loss, Adam and gradient clipping at 1.0.
// Built only in CUDA builds.
//
// Prints one line per problem scale: median and fastest step time, samples per
// second and the peak GPU memory LibTorch's caching allocator held (allocated
// and reserved), measured from a reset before the first step of that scale.
//
// Usage: bench_cuda_step [--scale S]... [--batch N] [--steps N] [--warmup N]
//                        [--classes C] [--fp32] [--contiguous]
// Defaults: scales 6 7 8, batch 1, 20 timed steps after 5 warm-up steps,
// 6 classes (5 fractal categories + background), bf16 autocast, channels-last.
// The input is random noise and the mask random class ids: the step time does
// not depend on the values.
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <c10/cuda/CUDACachingAllocator.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cuda_autocast.hpp"
#include "nn/unet.hpp"
#include "train/loss.hpp"
#include "train/schedule.hpp"

namespace {

constexpr int kInChannels = 3;
constexpr int kGroupNormGroups = 8;
constexpr int kBottleneckDim = 3;  // unet_layers = problem_scale - 3, the reference default
constexpr double kMaxGradNorm = 1.0;
constexpr double kLearningRate = 1e-3;

struct Options {
  std::vector<int> scales;
  int batch = 1;
  int steps = 20;
  int warmup = 5;
  int classes = 6;
  bool bf16 = true;
  bool channels_last = true;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr,
               "bench_cuda_step: %s\nusage: bench_cuda_step [--scale S]... [--batch N] [--steps N] [--warmup N] "
               "[--classes C] [--fp32] [--contiguous]\n",
               message.c_str());
  std::exit(2);
}

int parse_positive(const char* option, const char* text) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 1 || value > 1'000'000) {
    usage_error(std::string(option) + " takes a positive integer, got '" + text + "'");
  }
  return static_cast<int>(value);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        usage_error(arg + " needs a value");
      }
      return argv[++i];
    };
    if (arg == "--scale") {
      options.scales.push_back(parse_positive("--scale", value()));
    } else if (arg == "--batch") {
      options.batch = parse_positive("--batch", value());
    } else if (arg == "--steps") {
      options.steps = parse_positive("--steps", value());
    } else if (arg == "--warmup") {
      options.warmup = parse_positive("--warmup", value());
    } else if (arg == "--classes") {
      options.classes = parse_positive("--classes", value());
    } else if (arg == "--fp32") {
      options.bf16 = false;
    } else if (arg == "--contiguous") {
      options.channels_last = false;
    } else {
      usage_error("unknown option '" + arg + "'");
    }
  }
  if (options.scales.empty()) {
    options.scales = {6, 7, 8};
  }
  for (const int scale : options.scales) {
    if (scale <= kBottleneckDim) {
      usage_error("--scale must be above " + std::to_string(kBottleneckDim) + " so the U-Net has a level");
    }
  }
  return options;
}

// Converts every 5-D parameter (the convolution weights) to ChannelsLast3d,
// as Python's model.to(memory_format=torch.channels_last_3d) does.
void to_channels_last(scaffold::UNet& model) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : model->parameters()) {
    if (parameter.dim() == 5) {
      parameter.set_data(parameter.data().contiguous(torch::MemoryFormat::ChannelsLast3d));
    }
  }
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

double gib(std::int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

// AGGREGATE is index 0 of the allocator's per-pool statistics in LibTorch 1.13 and 2.x.
constexpr std::size_t kAggregatePool = 0;

void run_scale(const Options& options, int scale, c10::DeviceIndex device) {
  const int layers = scale - kBottleneckDim;
  const std::int64_t edge = std::int64_t{1} << scale;
  const torch::Device cuda(torch::kCUDA, device);

  torch::manual_seed(0);
  scaffold::UNet model(kInChannels, options.classes, layers, kGroupNormGroups);
  model->to(cuda);
  if (options.channels_last) {
    to_channels_last(model);
  }
  auto optimizer = scaffold::make_optimizer("ADAM", model->parameters(), kLearningRate);

  const auto memory_format =
      options.channels_last ? torch::MemoryFormat::ChannelsLast3d : torch::MemoryFormat::Contiguous;
  const torch::Tensor volume =
      torch::randn({options.batch, kInChannels, edge, edge, edge}, torch::TensorOptions(cuda)).contiguous(memory_format);
  const torch::Tensor mask =
      torch::randint(0, options.classes, {options.batch, edge, edge, edge}, torch::TensorOptions(cuda).dtype(torch::kLong));
  const torch::Tensor class_weights = torch::ones({options.classes}, torch::TensorOptions(cuda));

  torch::cuda::synchronize();
  c10::cuda::CUDACachingAllocator::resetPeakStats(device);

  std::vector<double> step_s;
  double loss_value = 0.0;
  for (int step = 0; step < options.warmup + options.steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    torch::Tensor loss;
    {
      scaffold::bench::CudaAutocast autocast(options.bf16);
      const torch::Tensor logits = model->forward(volume);
      loss = scaffold::segmentation_loss(logits, mask, class_weights).loss;
    }
    optimizer->zero_grad();
    loss.backward();
    scaffold::clip_grad_norm(model->parameters(), kMaxGradNorm);
    optimizer->step();
    torch::cuda::synchronize();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step >= options.warmup) {
      step_s.push_back(seconds);
    }
    loss_value = loss.item<double>();
  }

  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  const double median_s = median(step_s);
  std::printf("scale=%d edge=%lld layers=%d batch=%d params=%lld median_step_s=%.4f min_step_s=%.4f "
              "samples_per_s=%.2f peak_allocated_gib=%.2f peak_reserved_gib=%.2f last_loss=%.4f\n",
              scale, static_cast<long long>(edge), layers, options.batch,
              static_cast<long long>(scaffold::count_parameters(model)), median_s,
              *std::min_element(step_s.begin(), step_s.end()), options.batch / median_s,
              gib(stats.allocated_bytes[kAggregatePool].peak), gib(stats.reserved_bytes[kAggregatePool].peak),
              loss_value);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "bench_cuda_step: LibTorch sees no CUDA device\n");
    return 1;
  }
  const c10::DeviceIndex device = 0;
  std::printf("bench_cuda_step: torch %s, %s, %s, batch %d, %d timed steps after %d warm-up steps\n",
              TORCH_VERSION, options.bf16 ? "bf16 autocast" : "float32",
              options.channels_last ? "channels-last" : "contiguous", options.batch, options.steps, options.warmup);

  int failures = 0;
  for (const int scale : options.scales) {
    // An out-of-memory error at one scale should not hide the others.
    try {
      run_scale(options, scale, device);
    } catch (const c10::Error& error) {
      std::printf("scale=%d failed: %s\n", scale, error.what_without_backtrace());
      ++failures;
    } catch (const std::exception& error) {
      std::printf("scale=%d failed: %s\n", scale, error.what());
      ++failures;
    }
    std::fflush(stdout);
    c10::cuda::CUDACachingAllocator::emptyCache();
  }
  return failures == 0 ? 0 : 1;
}
