// RAII guard for bf16 autocast on CUDA, shared by the CUDA benchmarks.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/version.h>

// LibTorch 2.4 replaced the CUDA-only autocast calls with per-device ones.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define SCAFFOLD_AUTOCAST_PER_DEVICE 1
#else
#define SCAFFOLD_AUTOCAST_PER_DEVICE 0
#endif

namespace scaffold::bench {

// bf16 autocast on CUDA for the lifetime of the guard, like Python's
// torch.autocast("cuda", dtype=torch.bfloat16). Leaving the outermost guard
// clears autocast's cache of cast weights, which would otherwise keep serving
// the weights of before the optimizer step. The previous state is restored.
class CudaAutocast {
 public:
  explicit CudaAutocast(bool enabled) : enabled_(enabled) {
    if (!enabled_) {
      return;
    }
#if SCAFFOLD_AUTOCAST_PER_DEVICE
    previous_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    previous_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
#else
    previous_enabled_ = at::autocast::is_enabled();
    previous_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_enabled(true);
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
#endif
    at::autocast::increment_nesting();
  }

  ~CudaAutocast() {
    if (!enabled_) {
      return;
    }
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
#if SCAFFOLD_AUTOCAST_PER_DEVICE
    at::autocast::set_autocast_enabled(at::kCUDA, previous_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, previous_dtype_);
#else
    at::autocast::set_enabled(previous_enabled_);
    at::autocast::set_autocast_gpu_dtype(previous_dtype_);
#endif
  }

  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool enabled_;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

}  // namespace scaffold::bench
