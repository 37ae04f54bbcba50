#include "cuda/nccl_communicator.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/cuda_check.hpp"

namespace scaffold::cuda {

namespace {

// Throws std::runtime_error for a failed NCCL call, with NCCL's own text and
// the communicator's last error when there is one.
void check_nccl(ncclResult_t result, const char* call, ncclComm_t comm, int rank, int size) {
  if (result == ncclSuccess) {
    return;
  }
  std::string message = std::string(call) + " failed on rank " + std::to_string(rank) + " of " +
                        std::to_string(size) + ": " + ncclGetErrorString(result);
  const char* detail = ncclGetLastError(comm);
  if (detail != nullptr && detail[0] != '\0') {
    message += " (" + std::string(detail) + ")";
  }
  message += ". Run with NCCL_DEBUG=INFO for NCCL's log.";
  throw std::runtime_error(message);
}

ncclDataType_t nccl_type(NcclElementType type) {
  switch (type) {
    case NcclElementType::float32:
      return ncclFloat32;
    case NcclElementType::bfloat16:
      return ncclBfloat16;
  }
  throw std::invalid_argument("NcclCommunicator: unknown element type");
}

ncclRedOp_t nccl_op(NcclReduction reduction) {
  switch (reduction) {
    case NcclReduction::sum:
      return ncclSum;
    case NcclReduction::average:
      return ncclAvg;
  }
  throw std::invalid_argument("NcclCommunicator: unknown reduction");
}

// Makes `device` current for the lifetime of the guard and restores the
// previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    SCAFFOLD_CUDA_CHECK(cudaGetDevice(&previous_));
    SCAFFOLD_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

ncclUniqueId NcclCommunicator::make_unique_id() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr, 0, 1);
  return id;
}

#if SCAFFOLD_HAVE_MPI
NcclCommunicator NcclCommunicator::from_mpi(MPI_Comm comm, int device) {
  int rank = 0;
  int size = 0;
  if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS) {
    throw std::runtime_error("NcclCommunicator::from_mpi: MPI_Comm_rank or MPI_Comm_size failed. Call it after "
                             "MPI_Init and with a valid communicator");
  }

  // Only rank 0 calls ncclGetUniqueId, and the other ranks receive its id.
  ncclUniqueId id{};
  if (rank == 0) {
    id = make_unique_id();
  }
  const int status = MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, comm);
  if (status != MPI_SUCCESS) {
    throw std::runtime_error("NcclCommunicator::from_mpi: MPI_Bcast of the ncclUniqueId failed on rank " +
                             std::to_string(rank) + " with MPI error " + std::to_string(status));
  }
  return NcclCommunicator(id, rank, size, device);
}
#endif

NcclCommunicator::NcclCommunicator(const ncclUniqueId& id, int rank, int size, int device)
    : rank_(rank), size_(size), device_(device) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw std::invalid_argument("NcclCommunicator: rank " + std::to_string(rank) + " is outside [0, " +
                                std::to_string(size) + ")");
  }
  if (device < 0) {
    throw std::invalid_argument("NcclCommunicator: device " + std::to_string(device) + " is negative");
  }
  DeviceGuard guard(device);
  check_nccl(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank", nullptr, rank, size);
}

NcclCommunicator::NcclCommunicator(NcclCommunicator&& other) noexcept
    : comm_(std::exchange(other.comm_, nullptr)), rank_(other.rank_), size_(other.size_), device_(other.device_) {}

NcclCommunicator& NcclCommunicator::operator=(NcclCommunicator&& other) noexcept {
  if (this != &other) {
    destroy();
    comm_ = std::exchange(other.comm_, nullptr);
    rank_ = other.rank_;
    size_ = other.size_;
    device_ = other.device_;
  }
  return *this;
}

NcclCommunicator::~NcclCommunicator() { destroy(); }

void NcclCommunicator::destroy() noexcept {
  if (comm_ == nullptr) {
    return;
  }
  // Errors are dropped: a destructor cannot report them, and the process is
  // usually shutting down.
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
  ncclCommFinalize(comm_);
#endif
  ncclCommDestroy(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::all_reduce(void* buffer, std::size_t count, NcclElementType type, NcclReduction reduction,
                                  cudaStream_t stream) {
  if (comm_ == nullptr) {
    throw std::logic_error("NcclCommunicator::all_reduce called on a moved-from communicator");
  }
  check_nccl(ncclAllReduce(buffer, buffer, count, nccl_type(type), nccl_op(reduction), comm_, stream),
             "ncclAllReduce", comm_, rank_, size_);
}

}  // namespace scaffold::cuda
