#include "train/data_loader.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "core/rng.hpp"

namespace scaffold {

std::vector<int> epoch_order(const std::vector<int>& ids, std::uint64_t seed, int epoch) {
  std::vector<int> order = ids;
  CounterRng rng(seed, RngPurpose::kTrainShuffle, static_cast<std::uint64_t>(epoch));
  for (std::size_t i = order.size(); i > 1; --i) {
    const std::size_t j = rng.below(i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

std::vector<int> distributed_train_shard(const std::vector<int>& order, int rank, int replicas) {
  if (replicas < 1 || rank < 0 || rank >= replicas) {
    throw std::invalid_argument(fmt::format("distributed_train_shard: rank {} of {} replicas is invalid", rank, replicas));
  }
  if (order.empty()) {
    return {};
  }
  const std::size_t r = static_cast<std::size_t>(replicas);
  const std::size_t per_rank = (order.size() + r - 1) / r;
  std::vector<int> shard;
  shard.reserve(per_rank);
  for (std::size_t i = 0; i < per_rank; ++i) {
    // Position in the padded order; positions past the end wrap to its start.
    const std::size_t position = i * r + static_cast<std::size_t>(rank);
    shard.push_back(order[position % order.size()]);
  }
  return shard;
}

IndexRange validation_shard(std::size_t count, int rank, int replicas) {
  if (replicas < 1 || rank < 0 || rank >= replicas) {
    throw std::invalid_argument(fmt::format("validation_shard: rank {} of {} replicas is invalid", rank, replicas));
  }
  const std::size_t r = static_cast<std::size_t>(replicas);
  const std::size_t k = static_cast<std::size_t>(rank);
  const std::size_t base = count / r;
  const std::size_t extra = count % r;
  const std::size_t begin = k * base + std::min(k, extra);
  return {begin, begin + base + (k < extra ? 1 : 0)};
}

Batch read_batch(const DatasetInfo& info, Split split, const std::vector<int>& volume_indices) {
  const std::int64_t grid = info.vol_size;
  const std::int64_t voxels = grid * grid * grid;
  const auto batch_size = static_cast<std::int64_t>(volume_indices.size());

  Batch batch;
  batch.volume_indices = volume_indices;
  batch.volume = torch::empty({batch_size, 3, grid, grid, grid}, torch::kFloat32);
  batch.mask = torch::empty({batch_size, grid, grid, grid}, torch::kInt64);

  for (std::int64_t b = 0; b < batch_size; ++b) {
    const Sample sample = load_sample(info, split, volume_indices[static_cast<std::size_t>(b)]);
    std::memcpy(batch.volume.data_ptr<float>() + b * 3 * voxels, sample.volume.data(),
                static_cast<std::size_t>(3 * voxels) * sizeof(float));
    std::int64_t* mask_out = batch.mask.data_ptr<std::int64_t>() + b * voxels;
    for (std::int64_t v = 0; v < voxels; ++v) {
      mask_out[v] = sample.mask[static_cast<std::size_t>(v)];
    }
  }
  return batch;
}

PrefetchLoader::PrefetchLoader(const DatasetInfo& info, Split split, std::vector<int> order, int batch_size,
                               int prefetch_batches)
    : info_(info),
      split_(split),
      order_(std::move(order)),
      batch_size_(batch_size),
      batch_count_(static_cast<int>((order_.size() + static_cast<std::size_t>(batch_size) - 1) /
                                    static_cast<std::size_t>(batch_size))),
      prefetch_batches_(prefetch_batches) {
  if (prefetch_batches_ > 0 && batch_count_ > 0) {
    worker_ = std::thread([this] { run(); });
  }
}

PrefetchLoader::~PrefetchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) {
    worker_.join();
  }
}

Batch PrefetchLoader::read_batch(int batch_index) const {
  const auto begin = static_cast<std::size_t>(batch_index) * static_cast<std::size_t>(batch_size_);
  const auto end = std::min(order_.size(), begin + static_cast<std::size_t>(batch_size_));
  const std::vector<int> ids(order_.begin() + static_cast<std::ptrdiff_t>(begin),
                             order_.begin() + static_cast<std::ptrdiff_t>(end));
  return scaffold::read_batch(info_, split_, ids);
}

void PrefetchLoader::run() {
  try {
    for (int index = 0; index < batch_count_; ++index) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [this] { return stop_ || static_cast<int>(ready_.size()) < prefetch_batches_; });
        if (stop_) {
          return;
        }
      }

      Batch batch = read_batch(index);

      {
        std::lock_guard<std::mutex> lock(mutex_);
        ready_.push_back(std::move(batch));
      }
      changed_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
  }
  changed_.notify_all();
}

std::optional<Batch> PrefetchLoader::next() {
  if (next_to_return_ >= batch_count_) {
    return std::nullopt;
  }

  if (prefetch_batches_ == 0) {
    return read_batch(next_to_return_++);
  }

  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return !ready_.empty() || error_ || finished_; });
  if (ready_.empty()) {
    if (error_) {
      std::rethrow_exception(error_);
    }
    return std::nullopt;
  }
  Batch batch = std::move(ready_.front());
  ready_.pop_front();
  ++next_to_return_;
  lock.unlock();
  changed_.notify_all();
  return batch;
}

}  // namespace scaffold
