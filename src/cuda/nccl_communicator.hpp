// NCCL communicator for all-reducing gradients that live on the GPU.
//
// One communicator per process and GPU. The ranks agree on an ncclUniqueId
// made by rank 0: from_mpi() broadcasts it over MPI, and the constructor takes
// an id that the caller distributed by other means (a single process passes
// make_unique_id() with rank 0 of 1).
//
// Compiled only when NCCL was found (SCAFFOLD_HAVE_NCCL); from_mpi() only when
// MPI was found too (SCAFFOLD_HAVE_MPI).
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>
#include <nccl.h>

#if SCAFFOLD_HAVE_MPI
// Only the C API is used, and the deprecated C++ bindings warn under -Wextra.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif

namespace scaffold::cuda {

enum class NcclElementType {
  float32,
  bfloat16,
};

enum class NcclReduction {
  sum,
  average,  // sum divided by the rank count, computed by NCCL (ncclAvg)
};

class NcclCommunicator {
 public:
  // Returns a new id from ncclGetUniqueId. Call it on one rank only.
  static ncclUniqueId make_unique_id();

#if SCAFFOLD_HAVE_MPI
  // Collective over every rank of `comm`: rank 0 makes the id, MPI_Bcast
  // sends it, and every rank joins with its MPI rank on CUDA device `device`.
  // Throws std::runtime_error naming the failed MPI, CUDA or NCCL call.
  static NcclCommunicator from_mpi(MPI_Comm comm, int device);
#endif

  // Joins the communicator `id` as `rank` of `size` ranks on CUDA device
  // `device`, and blocks until all `size` ranks have joined. Throws
  // std::invalid_argument for a rank outside [0, size) or a negative device,
  // and std::runtime_error when CUDA or NCCL fails.
  NcclCommunicator(const ncclUniqueId& id, int rank, int size, int device);

  NcclCommunicator(NcclCommunicator&& other) noexcept;
  NcclCommunicator& operator=(NcclCommunicator&& other) noexcept;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // Finalizes and destroys the NCCL communicator. Call only after the
  // all-reduces issued on it have completed (synchronize their streams).
  ~NcclCommunicator();

  // Enqueues an in-place all-reduce of `count` elements of `buffer` (device
  // memory on this communicator's device) on `stream` and returns without
  // waiting. Every rank must make the same calls in the same order. Throws
  // std::runtime_error when NCCL rejects the call.
  void all_reduce(void* buffer, std::size_t count, NcclElementType type, NcclReduction reduction,
                  cudaStream_t stream);

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }

 private:
  void destroy() noexcept;

  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int size_ = 0;
  int device_ = 0;
};

}  // namespace scaffold::cuda
