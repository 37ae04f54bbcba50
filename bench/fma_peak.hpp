// A register-only FMA loop on every thread at once: an estimate of the
// machine's float32 peak, because real kernels also load and store. Shared by
// the benchmark programs so that a rate and the peak come from one run.
#pragma once

#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

namespace scaffold_bench {

// Twelve independent accumulators cover the FMA latency (4 cycles) on two
// FMA ports. Each iteration performs 12 FMAs of 8 lanes, 2 flops per lane.
__attribute__((target("avx2,fma"))) inline float fma_loop_avx2(std::int64_t iterations) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) {
    acc[i] = _mm256_set1_ps(static_cast<float>(i));
  }
  const __m256 a = _mm256_set1_ps(0.999999f);
  const __m256 b = _mm256_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iterations; ++n) {
    for (int i = 0; i < 12; ++i) {
      acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
  }
  __m256 sum = acc[0];
  for (int i = 1; i < 12; ++i) {
    sum = _mm256_add_ps(sum, acc[i]);
  }
  return _mm256_cvtss_f32(sum);
}

__attribute__((target("avx512f"))) inline float fma_loop_avx512(std::int64_t iterations) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) {
    acc[i] = _mm512_set1_ps(static_cast<float>(i));
  }
  const __m512 a = _mm512_set1_ps(0.999999f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iterations; ++n) {
    for (int i = 0; i < 12; ++i) {
      acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
  }
  // Summing every accumulator keeps the compiler from dropping any chain.
  __m512 sum = acc[0];
  for (int i = 1; i < 12; ++i) {
    sum = _mm512_add_ps(sum, acc[i]);
  }
  return _mm512_reduce_add_ps(sum);
}

// Runs the FMA loop on `threads` threads at once and returns GFLOP/s, an
// estimate of peak because real kernels also load and store.
inline double fma_peak_gflops(int threads, int lanes) {
  constexpr std::int64_t kIterations = 200'000'000;
  std::vector<float> sinks(threads);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&sinks, t, lanes] {
      sinks[t] = lanes == 16 ? fma_loop_avx512(kIterations) : fma_loop_avx2(kIterations);
    });
  }
  for (auto& worker : workers) {
    worker.join();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (sinks[0] == 12345.0f) {
    std::printf("(sink)\n");
  }
  return 2.0 * lanes * 12.0 * kIterations * threads / seconds / 1e9;
}

// The best peak this CPU supports: AVX-512 when present, else AVX2.
inline double best_fma_peak_gflops(int threads) {
  return __builtin_cpu_supports("avx512f") ? fma_peak_gflops(threads, 16) : fma_peak_gflops(threads, 8);
}

}  // namespace scaffold_bench
