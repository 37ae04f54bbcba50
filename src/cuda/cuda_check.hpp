// Turns a failed CUDA runtime call into std::runtime_error naming the call,
// the source line and CUDA's error name and text.
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

namespace scaffold::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                           cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                           "). Check that a GPU is visible (nvidia-smi) and that the driver supports "
                           "this CUDA runtime.");
}

}  // namespace scaffold::cuda

#define SCAFFOLD_CUDA_CHECK(call)                                              \
  do {                                                                         \
    const cudaError_t scaffold_cuda_status_ = (call);                          \
    if (scaffold_cuda_status_ != cudaSuccess) {                                \
      ::scaffold::cuda::throw_cuda_error(scaffold_cuda_status_, #call, __FILE__, __LINE__); \
    }                                                                          \
  } while (false)
