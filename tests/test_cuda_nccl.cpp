// Tests of the NCCL communicator (src/cuda/nccl_communicator.hpp) in one
// process. A one-rank all-reduce leaves the buffer unchanged, which checks the
// bootstrap, the element types and the stream handling, not the arithmetic
// between ranks. GPU cases are skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/nccl_communicator.hpp"

namespace {

using scaffold::cuda::NcclCommunicator;
using scaffold::cuda::NcclElementType;
using scaffold::cuda::NcclReduction;

std::string missing_device_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable CUDA device: ") + cudaGetErrorString(status);
  }
  return count == 0 ? "no CUDA device" : "";
}

#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    const std::string skip_reason = missing_device_reason(); \
    if (!skip_reason.empty()) {                              \
      GTEST_SKIP() << skip_reason;                           \
    }                                                        \
  } while (false)

TEST(NcclCommunicator, RejectsRankOutsideGroup) {
  // The arguments are checked before NCCL or CUDA is called.
  const ncclUniqueId id{};
  EXPECT_THROW(NcclCommunicator(id, 2, 2, 0), std::invalid_argument);
  EXPECT_THROW(NcclCommunicator(id, -1, 2, 0), std::invalid_argument);
  EXPECT_THROW(NcclCommunicator(id, 0, 0, 0), std::invalid_argument);
  EXPECT_THROW(NcclCommunicator(id, 0, 1, -1), std::invalid_argument);
}

// Runs one in-place all-reduce of `values` on a one-rank communicator and
// returns the buffer afterwards.
template <typename T>
std::vector<T> all_reduce_one_rank(const std::vector<T>& values, NcclElementType type, NcclReduction reduction) {
  NcclCommunicator communicator(NcclCommunicator::make_unique_id(), 0, 1, 0);
  EXPECT_EQ(communicator.rank(), 0);
  EXPECT_EQ(communicator.size(), 1);

  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  void* buffer = nullptr;
  const std::size_t bytes = values.size() * sizeof(T);
  EXPECT_EQ(cudaMalloc(&buffer, bytes), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(buffer, values.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);

  communicator.all_reduce(buffer, values.size(), type, reduction, stream);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);

  std::vector<T> result(values.size());
  EXPECT_EQ(cudaMemcpy(result.data(), buffer, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(buffer);
  cudaStreamDestroy(stream);
  return result;
}

TEST(NcclCommunicator, OneRankFloatSumAndAverage) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 1e-30f, 7.0f};
  EXPECT_EQ(all_reduce_one_rank(values, NcclElementType::float32, NcclReduction::sum), values);
  EXPECT_EQ(all_reduce_one_rank(values, NcclElementType::float32, NcclReduction::average), values);
}

TEST(NcclCommunicator, OneRankBfloat16Sum) {
  SKIP_WITHOUT_GPU();
  std::vector<__nv_bfloat16> values;
  for (const float value : {0.5f, -3.0f, 256.0f, 0.0078125f}) {
    values.push_back(__float2bfloat16(value));
  }
  const std::vector<__nv_bfloat16> result = all_reduce_one_rank(values, NcclElementType::bfloat16, NcclReduction::sum);
  ASSERT_EQ(result.size(), values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(__bfloat162float(result[i]), __bfloat162float(values[i])) << "element " << i;
  }
}

}  // namespace
