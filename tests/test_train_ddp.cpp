// Tests of data-parallel training: the samplers against hand-worked splits,
// and, on a real dataset, the bucketed gradient all-reduce and the sharded
// validation against the same computations done on one process. The binary
// runs as one process (ctest's per-test runs) and as two MPI ranks
// (train_ddp_mpi_2ranks); every expected value is computed on each rank from
// the rank count, so each check passes in both.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "dataset/dataset.hpp"
#include "dist/process_group.hpp"
#include "nn/unet.hpp"
#include "train/data_loader.hpp"
#include "train/ddp.hpp"
#include "train/evaluate.hpp"
#include "train/loss.hpp"

namespace fs = std::filesystem;
using namespace scaffold;

namespace {

// The process group of the whole test binary, created in main.
ProcessGroup* group = nullptr;

TEST(DistributedTrainShard, PadsByRepeatingTheFirstSamples) {
  // 7 samples on 2 ranks: padded to 8 with order[0], then strided.
  const std::vector<int> order = {10, 11, 12, 13, 14, 15, 16};
  EXPECT_EQ(distributed_train_shard(order, 0, 2), (std::vector<int>{10, 12, 14, 16}));
  EXPECT_EQ(distributed_train_shard(order, 1, 2), (std::vector<int>{11, 13, 15, 10}));
}

TEST(DistributedTrainShard, PadsCyclicallyWhenShorterThanThePadding) {
  // 2 samples on 5 ranks: padded order 20 21 20 21 20.
  const std::vector<int> order = {20, 21};
  const std::vector<int> expected = {20, 21, 20, 21, 20};
  for (int rank = 0; rank < 5; ++rank) {
    EXPECT_EQ(distributed_train_shard(order, rank, 5), std::vector<int>{expected[static_cast<std::size_t>(rank)]})
        << "rank " << rank;
  }
}

TEST(DistributedTrainShard, OneReplicaKeepsTheOrder) {
  const std::vector<int> order = {3, 1, 2};
  EXPECT_EQ(distributed_train_shard(order, 0, 1), order);
}

TEST(DistributedTrainShard, RejectsInvalidRank) {
  EXPECT_THROW(distributed_train_shard({1, 2}, 2, 2), std::invalid_argument);
  EXPECT_THROW(distributed_train_shard({1, 2}, 0, 0), std::invalid_argument);
}

TEST(ValidationShard, FirstRanksGetTheRemainder) {
  // 7 samples on 3 ranks: 3, 2, 2.
  EXPECT_EQ(validation_shard(7, 0, 3).begin, 0u);
  EXPECT_EQ(validation_shard(7, 0, 3).end, 3u);
  EXPECT_EQ(validation_shard(7, 1, 3).begin, 3u);
  EXPECT_EQ(validation_shard(7, 1, 3).end, 5u);
  EXPECT_EQ(validation_shard(7, 2, 3).begin, 5u);
  EXPECT_EQ(validation_shard(7, 2, 3).end, 7u);
}

TEST(ValidationShard, RanksPastTheCountAreEmpty) {
  // 2 samples on 3 ranks: 1, 1, 0.
  EXPECT_EQ(validation_shard(2, 1, 3).end - validation_shard(2, 1, 3).begin, 1u);
  EXPECT_EQ(validation_shard(2, 2, 3).begin, 2u);
  EXPECT_EQ(validation_shard(2, 2, 3).end, 2u);
}

TEST(ValidationShard, CoversEverySampleOnce) {
  for (std::size_t count : {0u, 1u, 5u, 64u, 65u}) {
    for (int replicas : {1, 2, 3, 8}) {
      std::size_t next = 0;
      for (int rank = 0; rank < replicas; ++rank) {
        const IndexRange range = validation_shard(count, rank, replicas);
        EXPECT_EQ(range.begin, next) << count << " samples, rank " << rank << " of " << replicas;
        next = range.end;
      }
      EXPECT_EQ(next, count) << count << " samples on " << replicas << " ranks";
    }
  }
}

// A real dataset of 10 volumes at 16^3 (7 training, 3 validation), built by
// rank 0 in a folder whose name it broadcasts.
class DataParallelFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    torch::set_num_threads(1);
    std::string root = fs::temp_directory_path() / ("scaffold_ddp_test_" + std::to_string(::getpid()));
    group->broadcast(root, 0);
    root_ = root;
    config_ = new Config();
    config_->problem_scale = 4;
    config_->unet_bottleneck_dim = 3;
    config_->n_categories = 1;
    config_->n_instances_used_per_fractal = 30;
    config_->local_batch_size = 1;
    config_->dataloader_num_workers = 0;
    config_->fract_base_dir = (root_ / "fractals").string();
    config_->dataset_dir = (root_ / "datasets").string();
    std::string dir;
    if (group->is_root()) {
      fs::remove_all(root_);
      dir = ensure_dataset(*config_).dir.string();
    }
    group->broadcast(dir, 0);
    info_ = new DatasetInfo(open_dataset(dir));
  }

  static void TearDownTestSuite() {
    group->barrier();
    if (group->is_root()) fs::remove_all(root_);
    delete info_;
    delete config_;
  }

  static UNet make_model() {
    torch::manual_seed(7);
    return UNet(3, info_->n_classes, config_->unet_layers(), config_->group_norm_groups, ConvBackend::libtorch);
  }

  static fs::path root_;
  static Config* config_;
  static DatasetInfo* info_;
};

fs::path DataParallelFixture::root_;
Config* DataParallelFixture::config_ = nullptr;
DatasetInfo* DataParallelFixture::info_ = nullptr;

TEST_F(DataParallelFixture, ValidationDiceSameForAnyRankCount) {
  UNet model = make_model();
  const torch::Tensor weights = torch::tensor({1.0F, 20.0F});
  const std::unique_ptr<ProcessGroup> local = ProcessGroup::create_local();

  const ValidationOutput sharded = run_validation(model, *config_, *info_, weights, -1, *group);
  const ValidationOutput whole = run_validation(model, *config_, *info_, weights, -1, *local);

  ASSERT_EQ(info_->val_ids.size(), 3u);
  EXPECT_EQ(sharded.samples, 3);
  EXPECT_EQ(whole.samples, 3);
  // Bit-identical: each sample's Dice comes from the same batch-1 forward pass,
  // and the values are summed in sample order on every rank.
  EXPECT_EQ(sharded.dice_sum, whole.dice_sum);
  // The loss sum goes through MPI's summation order, so only nearly equal.
  EXPECT_NEAR(sharded.loss_sum, whole.loss_sum, 1e-9 * std::abs(whole.loss_sum));
}

TEST_F(DataParallelFixture, GradientsAreAveragedOverRanks) {
  const torch::Tensor weights = torch::tensor({1.0F, 20.0F});
  ASSERT_GE(info_->train_ids.size(), static_cast<std::size_t>(group->size()));

  // Each rank takes one step's backward on its own sample through the reducer,
  // with 1 MiB buckets so the model's 4.7 MB of gradients fill several.
  UNet model = make_model();
  GradientAllReducer reducer(*group, model->parameters(), 1 << 20);
  if (group->size() > 1) {
    EXPECT_GE(reducer.bucket_count(), 4);
  }
  {
    const Batch batch = read_batch(*info_, Split::kTraining, {info_->train_ids[static_cast<std::size_t>(group->rank())]});
    segmentation_loss(model->forward(batch.volume), batch.mask, weights).loss.backward();
    reducer.finish();
  }

  // Expected: every rank's per-sample gradient computed here with a second
  // model, summed in rank order and divided by the rank count. Adding two
  // floats is commutative, so with 2 ranks the result is bit-identical.
  UNet reference = make_model();
  std::vector<torch::Tensor> expected;
  for (int r = 0; r < group->size(); ++r) {
    reference->zero_grad();
    const Batch batch = read_batch(*info_, Split::kTraining, {info_->train_ids[static_cast<std::size_t>(r)]});
    segmentation_loss(reference->forward(batch.volume), batch.mask, weights).loss.backward();
    std::size_t k = 0;
    for (const torch::Tensor& parameter : reference->parameters()) {
      if (r == 0) {
        expected.push_back(parameter.grad().clone());
      } else {
        expected[k].add_(parameter.grad());
      }
      ++k;
    }
  }
  const std::vector<torch::Tensor> parameters = model->parameters();
  ASSERT_EQ(parameters.size(), expected.size());
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    const torch::Tensor average = group->size() == 1 ? expected[k] : expected[k].mul(1.0F / group->size());
    ASSERT_TRUE(parameters[k].grad().defined()) << "parameter " << k;
    EXPECT_TRUE(torch::equal(parameters[k].grad(), average))
        << "parameter " << k << ": max difference " << (parameters[k].grad() - average).abs().max().item<float>();
  }
}

TEST_F(DataParallelFixture, SecondStepReusesTheBuckets) {
  // Two backward passes in a row must give the same averaged gradients: the
  // buckets are reset after each step.
  const torch::Tensor weights = torch::tensor({1.0F, 20.0F});
  UNet model = make_model();
  GradientAllReducer reducer(*group, model->parameters(), 1 << 20);
  const Batch batch = read_batch(*info_, Split::kTraining, {info_->train_ids[static_cast<std::size_t>(group->rank())]});
  std::vector<torch::Tensor> first;
  for (int step = 0; step < 2; ++step) {
    model->zero_grad();
    segmentation_loss(model->forward(batch.volume), batch.mask, weights).loss.backward();
    reducer.finish();
    std::size_t k = 0;
    for (const torch::Tensor& parameter : model->parameters()) {
      if (step == 0) {
        first.push_back(parameter.grad().clone());
      } else {
        EXPECT_TRUE(torch::equal(parameter.grad(), first[k])) << "parameter " << k;
      }
      ++k;
    }
  }
}

TEST_F(DataParallelFixture, BroadcastGivesEveryRankRankZerosWeights) {
  UNet model = make_model();
  GradientAllReducer reducer(*group, model->parameters(), 1 << 20);
  {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& parameter : model->parameters()) {
      parameter.add_(static_cast<float>(group->rank()));
    }
  }
  reducer.broadcast_parameters();

  // Rank 0's values are the seeded initial weights.
  UNet reference = make_model();
  const std::vector<torch::Tensor> expected = reference->parameters();
  std::size_t k = 0;
  for (const torch::Tensor& parameter : model->parameters()) {
    EXPECT_TRUE(torch::equal(parameter, expected[k])) << "parameter " << k << " on rank " << group->rank();
    ++k;
  }
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Listing the tests (gtest_discover_tests at build time) needs no MPI.
  if (GTEST_FLAG_GET(list_tests)) return RUN_ALL_TESTS();

  const LaunchInfo launch = discover_launch();
  auto process_group = launch.rank || launch.size ? ProcessGroup::init(&argc, &argv) : ProcessGroup::create_local();
  process_group->set_collective_timeout(std::chrono::seconds(120));
  group = process_group.get();

  // The job fails when a test failed on any rank.
  std::int64_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  process_group->all_reduce_max(&failed, 1);
  return failed != 0 ? 1 : 0;
}
