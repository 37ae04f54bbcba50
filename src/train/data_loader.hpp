// Batches of dataset samples as tensors, read ahead on a background thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "dataset/dataset.hpp"

namespace scaffold {

struct Batch {
  std::vector<int> volume_indices;
  torch::Tensor volume;  // [B, 3, D, H, W] float32
  torch::Tensor mask;    // [B, D, H, W] int64, labels 0..n_categories
  int size() const { return static_cast<int>(volume_indices.size()); }
};

// Order of the training samples in `epoch`: a Fisher-Yates shuffle of `ids`
// driven by CounterRng(seed, kTrainShuffle, epoch).
std::vector<int> epoch_order(const std::vector<int>& ids, std::uint64_t seed, int epoch);

// The training samples of `rank` out of `replicas` data-parallel ranks, as
// torch's DistributedSampler picks them from an already shuffled `order`: the
// order is padded to a multiple of `replicas` by repeating its first entries
// (cyclically when it is shorter than the padding), and rank r takes the
// entries at r, r + replicas, r + 2 * replicas, ... Every rank gets
// ceil(n / replicas) samples, so all ranks take the same number of steps.
std::vector<int> distributed_train_shard(const std::vector<int>& order, int rank, int replicas);

// Positions [begin, end) of `rank`'s validation samples: a contiguous split
// without padding in which the first count % replicas ranks get one sample
// more. Ranks past the count get an empty range.
struct IndexRange {
  std::size_t begin = 0;
  std::size_t end = 0;
};
IndexRange validation_shard(std::size_t count, int rank, int replicas);

// Reads the batches of `order` (consecutive groups of `batch_size`, the last one
// possibly smaller). With `prefetch_batches` > 0 a background thread reads up to
// that many batches ahead; with 0 each batch is read when requested. Errors on
// the reading thread are rethrown from next().
class PrefetchLoader {
 public:
  PrefetchLoader(const DatasetInfo& info, Split split, std::vector<int> order, int batch_size,
                 int prefetch_batches);
  ~PrefetchLoader();
  PrefetchLoader(const PrefetchLoader&) = delete;
  PrefetchLoader& operator=(const PrefetchLoader&) = delete;

  // The next batch, or nullopt after the last one.
  std::optional<Batch> next();
  int batch_count() const { return batch_count_; }

 private:
  Batch read_batch(int batch_index) const;
  void run();

  const DatasetInfo& info_;
  Split split_;
  std::vector<int> order_;
  int batch_size_;
  int batch_count_;
  int prefetch_batches_;
  int next_to_return_ = 0;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool stop_ = false;
  bool finished_ = false;
  std::thread worker_;
};

// Reads one batch directly (no thread); used for warmup and class-weight sampling.
Batch read_batch(const DatasetInfo& info, Split split, const std::vector<int>& volume_indices);

}  // namespace scaffold
