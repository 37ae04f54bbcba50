// Tests of the training data path: the per-epoch shuffle and the prefetching
// batch loader, against samples read directly from a real dataset on disk.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>

#include "core/config.hpp"
#include "dataset/dataset.hpp"
#include "train/data_loader.hpp"

namespace fs = std::filesystem;
using namespace scaffold;

namespace {

class DatasetFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("scaffold_loader_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    Config config;
    config.problem_scale = 4;
    config.n_categories = 2;
    config.n_instances_used_per_fractal = 15;  // 10 volumes
    config.val_split = 30;
    config.fract_base_dir = (root_ / "fractals").string();
    config.dataset_dir = (root_ / "datasets").string();
    info_ = new DatasetInfo(ensure_dataset(config));
  }

  static void TearDownTestSuite() {
    delete info_;
    fs::remove_all(root_);
  }

  static fs::path root_;
  static DatasetInfo* info_;
};

fs::path DatasetFixture::root_;
DatasetInfo* DatasetFixture::info_ = nullptr;

}  // namespace

TEST(EpochOrder, IsAPermutation) {
  const std::vector<int> ids = {3, 5, 8, 13, 21, 34, 55};
  std::vector<int> order = epoch_order(ids, 42, 1);
  ASSERT_EQ(order.size(), ids.size());
  std::sort(order.begin(), order.end());
  EXPECT_EQ(order, ids);
}

TEST(EpochOrder, DependsOnlyOnSeedAndEpoch) {
  std::vector<int> ids(50);
  for (int i = 0; i < 50; ++i) ids[static_cast<std::size_t>(i)] = i;
  EXPECT_EQ(epoch_order(ids, 42, 3), epoch_order(ids, 42, 3));
  EXPECT_NE(epoch_order(ids, 42, 3), epoch_order(ids, 42, 4));
  EXPECT_NE(epoch_order(ids, 42, 3), epoch_order(ids, 43, 3));
  EXPECT_NE(epoch_order(ids, 42, 3), ids);
}

TEST(EpochOrder, FirstPositionIsRoughlyUniform) {
  // Over 4000 epochs each of 4 ids starts the order about 1000 times; the bound
  // is more than 6 standard deviations (sqrt(4000 * 0.25 * 0.75) = 27.4).
  const std::vector<int> ids = {0, 1, 2, 3};
  int counts[4] = {0, 0, 0, 0};
  for (int epoch = 0; epoch < 4000; ++epoch) {
    ++counts[epoch_order(ids, 7, epoch)[0]];
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(counts[i], 1000, 170) << "id " << i;
  }
}

TEST_F(DatasetFixture, BatchesMatchSamplesOnDisk) {
  ASSERT_EQ(info_->train_ids.size() + info_->val_ids.size(), 10u);
  const std::vector<int> order = epoch_order(info_->train_ids, 42, 1);

  for (const int prefetch : {0, 2}) {
    PrefetchLoader loader(*info_, Split::kTraining, order, 3, prefetch);
    const int expected_batches = static_cast<int>((order.size() + 2) / 3);
    EXPECT_EQ(loader.batch_count(), expected_batches);

    std::size_t position = 0;
    int batches = 0;
    while (auto batch = loader.next()) {
      ++batches;
      const int size = batch->size();
      EXPECT_EQ(batch->volume.sizes(), (std::vector<std::int64_t>{size, 3, 16, 16, 16}));
      EXPECT_EQ(batch->mask.sizes(), (std::vector<std::int64_t>{size, 16, 16, 16}));
      EXPECT_EQ(batch->mask.scalar_type(), torch::kInt64);

      for (int b = 0; b < size; ++b) {
        const int id = order[position++];
        EXPECT_EQ(batch->volume_indices[static_cast<std::size_t>(b)], id);
        const Sample sample = load_sample(*info_, Split::kTraining, id);
        const torch::Tensor volume = torch::from_blob(const_cast<float*>(sample.volume.data()), {3, 16, 16, 16});
        EXPECT_TRUE(torch::equal(batch->volume[b], volume)) << "volume " << id << " prefetch " << prefetch;

        std::int64_t mismatches = 0;
        const auto mask = batch->mask[b].flatten();
        for (std::int64_t v = 0; v < 4096; ++v) {
          mismatches += mask[v].item<std::int64_t>() != sample.mask[static_cast<std::size_t>(v)];
        }
        EXPECT_EQ(mismatches, 0) << "mask " << id;
      }
    }
    EXPECT_EQ(batches, expected_batches);
    EXPECT_EQ(position, order.size());
    EXPECT_FALSE(loader.next().has_value());
  }
}

TEST_F(DatasetFixture, ReadErrorSurfacesFromNext) {
  // A copy of the dataset with one training volume truncated.
  const fs::path copy = root_ / "broken";
  fs::remove_all(copy);
  fs::copy(info_->dir, copy, fs::copy_options::recursive);
  DatasetInfo broken = *info_;
  broken.dir = copy;
  const int victim = broken.train_ids.back();
  const fs::path victim_path = volume_path(broken, Split::kTraining, victim);
  fs::resize_file(victim_path, 100);

  PrefetchLoader loader(broken, Split::kTraining, broken.train_ids, 1, 2);
  bool thrown = false;
  try {
    while (loader.next()) {
    }
  } catch (const std::exception& error) {
    thrown = true;
    EXPECT_NE(std::string(error.what()).find(victim_path.filename().string()), std::string::npos) << error.what();
  }
  EXPECT_TRUE(thrown);
}

TEST_F(DatasetFixture, EarlyDestructionDoesNotHang) {
  PrefetchLoader loader(*info_, Split::kTraining, info_->train_ids, 1, 1);
  ASSERT_TRUE(loader.next().has_value());
  // The destructor stops the reader while it waits for queue space.
}
