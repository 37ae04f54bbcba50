// Data-parallel gradient averaging: the gradients of the model's parameters
// are packed into buckets that are all-reduced (summed over ranks, then divided
// by the rank count, as torch DDP averages) while the backward pass is still
// computing the remaining gradients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "dist/process_group.hpp"

namespace scaffold {

class GradientAllReducer {
 public:
  // Buckets hold `bucket_bytes` of float32 gradients or less (a parameter
  // larger than that gets a bucket of its own), filled in reverse parameter
  // order because the backward pass produces the last layers' gradients first.
  // With one rank the reducer does nothing. Every parameter must be a CPU
  // float32 tensor.
  GradientAllReducer(ProcessGroup& group, std::vector<torch::Tensor> parameters, std::size_t bucket_bytes);
  ~GradientAllReducer();
  GradientAllReducer(const GradientAllReducer&) = delete;
  GradientAllReducer& operator=(const GradientAllReducer&) = delete;

  // Call after the backward pass: starts the buckets that are still waiting
  // (a parameter without a gradient contributes zeros), waits for all of them
  // and writes the averaged gradients into each parameter's grad.
  void finish();

  // Copies rank 0's parameter values to every rank.
  void broadcast_parameters();

  int bucket_count() const { return static_cast<int>(buckets_.size()); }
  // Seconds spent inside finish() waiting for reductions, since construction.
  double wait_seconds() const { return wait_seconds_; }

 private:
  struct Bucket {
    std::vector<std::size_t> parameters;  // indices into parameters_
    std::vector<std::int64_t> offsets;    // element offset of each parameter in `buffer`
    std::vector<float> buffer;
    std::size_t ready = 0;                // parameters whose gradient arrived this step
    bool started = false;
    AllReduceRequest request;
  };

  void on_gradient(std::size_t parameter, const torch::Tensor& gradient);
  void start_ready_buckets();
  void reset_step();

  ProcessGroup& group_;
  std::vector<torch::Tensor> parameters_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;     // parameter index -> bucket index
  std::vector<std::size_t> slot_of_;       // parameter index -> position in its bucket
  std::vector<bool> arrived_;              // parameter index -> gradient arrived this step
  std::vector<unsigned> hook_handles_;
  std::size_t next_to_start_ = 0;          // buckets start in index order on every rank
  std::thread::id owner_thread_;
  double wait_seconds_ = 0;
};

}  // namespace scaffold
