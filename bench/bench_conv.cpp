// Throughput of 3D convolutions on CPU: scaffold's oneDNN path against
// LibTorch's own torch::conv3d, for the U-Net's 64 -> 64 channel, 3x3x3,
// padding 1 convolution at batch 1.
//
// For each volume size it prints GFLOP/s of forward, backward-data,
// backward-weights and the whole forward + backward, for plain inputs, and
// the three passes again for channels-last inputs. It also times the bare
// oneDNN primitives with activations in three layouts and no reorders, and
// the weight reorder, which shows whether caching blocked weights would pay.
// A register-only FMA loop gives an estimate of the machine's float32 peak.
//
// Usage: bench_conv [threads] [repetitions]   (defaults 2 and 10)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/torch.h>

#include "fma_peak.hpp"

#include "nn/onednn_conv.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Returns the minimum wall time in seconds of `repetitions` calls, after one
// untimed call that creates primitives and warms caches. The minimum, not the
// median, because on a shared machine other processes only ever add time.
double best_seconds(int repetitions, const std::function<void()>& body) {
  body();
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = Clock::now();
    body();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return *std::min_element(times.begin(), times.end());
}


// Bare oneDNN primitives with every buffer already in the primitive's
// layout: the time the U-Net would spend if activations stayed blocked.
struct BarePrimitiveTimes {
  double forward_s;
  double backward_data_s;
  double backward_weights_s;
  double weight_reorder_s;
  std::string forward_impl;
  std::string backward_data_impl;
  std::string backward_weights_impl;
};

// activation_tag fixes the layout of src and dst (and their gradients):
// format_tag::any lets oneDNN choose, ncdhw is LibTorch's contiguous layout
// and ndhwc its ChannelsLast3d layout.
BarePrimitiveTimes time_bare_primitives(std::int64_t channels, std::int64_t size, int repetitions,
                                        dnnl::memory::format_tag activation_tag) {
  using dnnl::memory;
  using Tag = memory::format_tag;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);

  const memory::dims activation_dims{1, channels, size, size, size};
  const memory::dims weights_dims{channels, channels, 3, 3, 3};
  const memory::dims strides{1, 1, 1};
  const memory::dims padding{1, 1, 1};
  const memory::desc activation_any(activation_dims, memory::data_type::f32, activation_tag);
  const memory::desc weights_any(weights_dims, memory::data_type::f32, Tag::any);

  const dnnl::convolution_forward::desc fwd_desc(dnnl::prop_kind::forward_training,
                                                 dnnl::algorithm::convolution_direct, activation_any,
                                                 weights_any, activation_any, strides, padding, padding);
  const dnnl::convolution_forward::primitive_desc fwd_pd(fwd_desc, engine);
  const dnnl::convolution_backward_data::desc bwd_data_desc(dnnl::algorithm::convolution_direct,
                                                            activation_any, weights_any, activation_any,
                                                            strides, padding, padding);
  const dnnl::convolution_backward_data::primitive_desc bwd_data_pd(bwd_data_desc, engine, fwd_pd);
  const dnnl::convolution_backward_weights::desc bwd_weights_desc(
      dnnl::algorithm::convolution_direct, activation_any, weights_any, activation_any, strides, padding,
      padding);
  const dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd(bwd_weights_desc, engine, fwd_pd);

  // Buffers hold zeros because the kernels' speed does not depend on the values.
  memory src(fwd_pd.src_desc(), engine);
  memory weights(fwd_pd.weights_desc(), engine);
  memory dst(fwd_pd.dst_desc(), engine);
  memory diff_dst(bwd_data_pd.diff_dst_desc(), engine);
  memory bwd_weights(bwd_data_pd.weights_desc(), engine);
  memory diff_src(bwd_data_pd.diff_src_desc(), engine);
  memory bw_src(bwd_weights_pd.src_desc(), engine);
  memory bw_diff_dst(bwd_weights_pd.diff_dst_desc(), engine);
  memory diff_weights(bwd_weights_pd.diff_weights_desc(), engine);
  memory plain_weights(memory::desc(weights_dims, memory::data_type::f32, Tag::oidhw), engine);
  for (memory* buffer : {&src, &weights, &diff_dst, &bwd_weights, &bw_src, &bw_diff_dst, &plain_weights}) {
    std::fill_n(static_cast<char*>(buffer->get_data_handle()), buffer->get_desc().get_size(), 0);
  }

  dnnl::convolution_forward forward(fwd_pd);
  dnnl::convolution_backward_data backward_data(bwd_data_pd);
  dnnl::convolution_backward_weights backward_weights(bwd_weights_pd);
  dnnl::reorder weight_reorder(plain_weights, weights);

  BarePrimitiveTimes times;
  times.forward_s = best_seconds(repetitions, [&] {
    forward.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  });
  times.backward_data_s = best_seconds(repetitions, [&] {
    backward_data.execute(
        stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, bwd_weights}, {DNNL_ARG_DIFF_SRC, diff_src}});
    stream.wait();
  });
  times.backward_weights_s = best_seconds(repetitions, [&] {
    backward_weights.execute(
        stream, {{DNNL_ARG_SRC, bw_src}, {DNNL_ARG_DIFF_DST, bw_diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
    stream.wait();
  });
  times.weight_reorder_s = best_seconds(repetitions * 4, [&] {
    weight_reorder.execute(stream, plain_weights, weights);
    stream.wait();
  });
  times.forward_impl = fwd_pd.impl_info_str();
  times.backward_data_impl = bwd_data_pd.impl_info_str();
  times.backward_weights_impl = bwd_weights_pd.impl_info_str();
  return times;
}

void print_row(const char* pass, double flops, double libtorch_s, double onednn_s) {
  std::printf("  %-22s %10.2f %10.2f %12.1f %12.1f %8.1fx\n", pass, libtorch_s * 1e3, onednn_s * 1e3,
              flops / libtorch_s / 1e9, flops / onednn_s / 1e9, libtorch_s / onednn_s);
}

// Times of scaffold::onednn_conv3d through autograd, for activations in one
// layout.
struct OurTimes {
  double forward_s;
  double backward_data_s;
  double backward_weights_s;
};

OurTimes time_ours(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& grad_output,
                   std::int64_t padding, int repetitions) {
  OurTimes times{};
  times.forward_s = best_seconds(repetitions, [&] {
    torch::NoGradGuard no_grad;
    scaffold::onednn_conv3d(input, weight, c10::nullopt, padding);
  });
  // Asking for one gradient runs only the matching backward primitive.
  const torch::Tensor input_leaf = input.clone().requires_grad_(true);
  const torch::Tensor weight_leaf = weight.clone().requires_grad_(true);
  const torch::Tensor data_output = scaffold::onednn_conv3d(input_leaf, weight, c10::nullopt, padding);
  times.backward_data_s = best_seconds(repetitions, [&] {
    torch::autograd::grad({data_output}, {input_leaf}, {grad_output}, /*retain_graph=*/true);
  });
  const torch::Tensor weights_output = scaffold::onednn_conv3d(input, weight_leaf, c10::nullopt, padding);
  times.backward_weights_s = best_seconds(repetitions, [&] {
    torch::autograd::grad({weights_output}, {weight_leaf}, {grad_output}, /*retain_graph=*/true);
  });
  return times;
}

void bench_size(std::int64_t size, int repetitions) {
  constexpr std::int64_t kChannels = 64;
  constexpr std::int64_t kPadding = 1;

  // input, grad_output: [1, 64, S, S, S]; weight: [64, 64, 3, 3, 3]
  const torch::Tensor input = torch::randn({1, kChannels, size, size, size});
  const torch::Tensor weight = torch::randn({kChannels, kChannels, 3, 3, 3}) * 0.05;
  const torch::Tensor grad_output = torch::randn({1, kChannels, size, size, size});
  const double flops = 2.0 * kChannels * kChannels * 27.0 * static_cast<double>(size * size * size);

  // LibTorch: forward and the two halves of at::convolution_backward, the
  // function its autograd calls for conv3d.
  const double libtorch_forward_s = best_seconds(repetitions, [&] {
    torch::NoGradGuard no_grad;
    torch::conv3d(input, weight, {}, 1, kPadding);
  });
  const auto libtorch_backward = [&](std::array<bool, 3> mask) {
    torch::NoGradGuard no_grad;
    at::convolution_backward(grad_output, input, weight, c10::nullopt, {1, 1, 1}, {kPadding, kPadding, kPadding},
                             {1, 1, 1}, false, {0, 0, 0}, 1, mask);
  };
  const double libtorch_backward_data_s =
      best_seconds(repetitions, [&] { libtorch_backward({true, false, false}); });
  const double libtorch_backward_weights_s =
      best_seconds(repetitions, [&] { libtorch_backward({false, true, false}); });

  // Our function on plain contiguous activations (blocked primitives with
  // reorders) and on channels-last ones, the U-Net's layout.
  const OurTimes plain = time_ours(input, weight, grad_output, kPadding, repetitions);
  const auto channels_last = torch::MemoryFormat::ChannelsLast3d;
  const OurTimes ours_channels_last = time_ours(input.contiguous(channels_last), weight,
                                                grad_output.contiguous(channels_last), kPadding, repetitions);
  const double onednn_forward_s = plain.forward_s;
  const double onednn_backward_data_s = plain.backward_data_s;
  const double onednn_backward_weights_s = plain.backward_weights_s;
  const torch::Tensor input_leaf = input.clone().requires_grad_(true);
  const torch::Tensor weight_leaf = weight.clone().requires_grad_(true);

  // Whole step of one layer: forward, then gradients of input and weight.
  const auto whole_step = [&](bool use_onednn) {
    const torch::Tensor output = use_onednn ? scaffold::onednn_conv3d(input_leaf, weight_leaf, c10::nullopt, kPadding)
                                            : torch::conv3d(input_leaf, weight_leaf, {}, 1, kPadding);
    torch::autograd::grad({output}, {input_leaf, weight_leaf}, {grad_output});
  };
  const double libtorch_step_s = best_seconds(repetitions, [&] { whole_step(false); });
  const double onednn_step_s = best_seconds(repetitions, [&] { whole_step(true); });


  std::printf("\n64 -> 64, kernel 3, padding 1, input [1, 64, %ld, %ld, %ld], %.3f GFLOP per pass\n",
              static_cast<long>(size), static_cast<long>(size), static_cast<long>(size), flops / 1e9);
  std::printf("  %-22s %10s %10s %12s %12s %9s\n", "pass", "torch ms", "oneDNN ms", "torch GF/s", "oneDNN GF/s",
              "speedup");
  print_row("forward", flops, libtorch_forward_s, onednn_forward_s);
  print_row("backward data", flops, libtorch_backward_data_s, onednn_backward_data_s);
  print_row("backward weights", flops, libtorch_backward_weights_s, onednn_backward_weights_s);
  print_row("forward + backward", 3.0 * flops, libtorch_step_s, onednn_step_s);
  std::printf("  onednn_conv3d on ChannelsLast3d activations (the U-Net's layout; input gradient as a forward "
              "convolution):\n");
  std::printf("    forward          %8.2f ms %8.1f GF/s\n", ours_channels_last.forward_s * 1e3,
              flops / ours_channels_last.forward_s / 1e9);
  std::printf("    backward data    %8.2f ms %8.1f GF/s\n", ours_channels_last.backward_data_s * 1e3,
              flops / ours_channels_last.backward_data_s / 1e9);
  std::printf("    backward weights %8.2f ms %8.1f GF/s\n", ours_channels_last.backward_weights_s * 1e3,
              flops / ours_channels_last.backward_weights_s / 1e9);

  const std::pair<dnnl::memory::format_tag, const char*> layouts[] = {
      {dnnl::memory::format_tag::any, "oneDNN's choice (blocked)"},
      {dnnl::memory::format_tag::ncdhw, "ncdhw (contiguous)"},
      {dnnl::memory::format_tag::ndhwc, "ndhwc (ChannelsLast3d)"},
  };
  for (const auto& [tag, layout_name] : layouts) {
    const BarePrimitiveTimes bare = time_bare_primitives(kChannels, size, repetitions, tag);
    std::printf("  bare oneDNN primitives, activations %s, no reorders:\n", layout_name);
    std::printf("    forward          %8.2f ms %8.1f GF/s  %s\n", bare.forward_s * 1e3,
                flops / bare.forward_s / 1e9, bare.forward_impl.c_str());
    std::printf("    backward data    %8.2f ms %8.1f GF/s  %s\n", bare.backward_data_s * 1e3,
                flops / bare.backward_data_s / 1e9, bare.backward_data_impl.c_str());
    std::printf("    backward weights %8.2f ms %8.1f GF/s  %s\n", bare.backward_weights_s * 1e3,
                flops / bare.backward_weights_s / 1e9, bare.backward_weights_impl.c_str());
    std::printf("    weight reorder oidhw -> primitive layout: %.3f ms (%.2f%% of this forward)\n",
                bare.weight_reorder_s * 1e3, 100.0 * bare.weight_reorder_s / bare.forward_s);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int repetitions = argc > 2 ? std::atoi(argv[2]) : 10;
  if (threads < 1 || repetitions < 1) {
    std::fprintf(stderr, "usage: bench_conv [threads >= 1] [repetitions >= 1]\n");
    return 2;
  }
  torch::set_num_threads(threads);

  std::printf("threads %d, best of %d repetitions\n", threads, repetitions);
  std::printf("register-only FMA loop (peak estimate): AVX2 %.1f GFLOP/s", scaffold_bench::fma_peak_gflops(threads, 8));
  if (__builtin_cpu_supports("avx512f")) {
    std::printf(", AVX-512 %.1f GFLOP/s", scaffold_bench::fma_peak_gflops(threads, 16));
  }
  std::printf("\n");

  for (const std::int64_t size : {16, 32}) {
    bench_size(size, repetitions);
  }
  return 0;
}
