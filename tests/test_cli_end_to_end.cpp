// End-to-end tests of the scaffold command: real processes, real files. A tiny
// problem (16^3 volumes) is generated and trained to its Dice target, and the
// run directory is checked against values recomputed from its own files.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "train/run_files.hpp"

namespace fs = std::filesystem;

using scaffold_test::CommandResult;
using scaffold_test::only_run_dir;
using scaffold_test::run_in;
using scaffold_test::scaffold_command;
using scaffold_test::TempDir;

namespace {


// The tiny problem: 16^3 volumes, 2 classes, a 2-level U-Net, 30 volumes.
constexpr const char* kTinyConfig = R"(seed: 42
n_categories: 2
n_instances_used_per_fractal: 45
problem_scale: 4
unet_bottleneck_dim: 2
target_dice: 0.9
starting_learning_rate: 0.001
min_learning_rate: 0.0001
T_0: 4
T_mult: 1
val_split: 30
epochs: 30
warmup_batches: 2
checkpoint_interval: 5
)";


}  // namespace

TEST(EndToEnd, TinyProblemReachesDiceTarget) {
  TempDir dir("e2e_train");
  scaffold::write_file_atomic(dir.path() / "tiny.yml", std::string_view(kTinyConfig));

  // Generate the fractal library, then train (the dataset is built on first use).
  const CommandResult generate = run_in(dir.path(), scaffold_command("generate_fractals -c tiny.yml"));
  ASSERT_EQ(generate.exit_code, 0) << generate.output;
  EXPECT_TRUE(fs::exists(dir.path() / "fractals/var0.15/seed42/3DIFS_param/000001.csv")) << generate.output;
  EXPECT_TRUE(fs::exists(dir.path() / "fractals/var0.15/seed42/instances/np16/000001/000001_0144.npy"));

  const CommandResult train = run_in(dir.path(), scaffold_command("benchmark -c tiny.yml --base-run-dir runs"));
  ASSERT_EQ(train.exit_code, 0) << train.output;
  EXPECT_NE(train.output.find("FOM: trained to validation Dice >= 0.9"), std::string::npos) << train.output;

  // Run directory contents.
  const fs::path run_dir = only_run_dir(dir.path() / "runs");
  EXPECT_EQ(run_dir.filename().string().rfind("benchmark_", 0), 0u) << run_dir;
  for (const char* name : {"config.yaml", "tiny.yml", "overrides.yaml", "restart.sh", "train_stats.csv", "result.json",
                           "checkpoints/checkpoint_last.pt", "checkpoints/checkpoint_best.pt",
                           "figures/train_loss.svg", "figures/val_dice.svg", "figures/val_loss.svg",
                           "figures/learning_rate.svg", "figures/epoch_time.svg"}) {
    EXPECT_TRUE(fs::exists(run_dir / name)) << name;
  }
  EXPECT_EQ(run_in(run_dir, "bash -n restart.sh").exit_code, 0);
  struct stat restart_stat {};
  ASSERT_EQ(::stat((run_dir / "restart.sh").c_str(), &restart_stat), 0);
  EXPECT_NE(restart_stat.st_mode & S_IXUSR, 0u);

  // train_stats.csv: one row per epoch, counters consistent with 21 training volumes.
  const std::vector<scaffold::EpochStats> rows = scaffold::read_train_stats(run_dir / "train_stats.csv");
  ASSERT_FALSE(rows.empty());
  double duration_sum = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const scaffold::EpochStats& row = rows[i];
    EXPECT_EQ(row.epoch, static_cast<int>(i) + 1);
    EXPECT_EQ(row.optimizer_steps, 21);
    EXPECT_EQ(row.total_optimizer_steps, 21 * (static_cast<std::int64_t>(i) + 1));
    EXPECT_NEAR(row.overall_loss, row.epoch_loss / 21.0, 1e-9 * std::abs(row.epoch_loss));
    EXPECT_NEAR(row.val_loss_avg, row.val_loss_epoch / 9.0, 1e-9 * std::abs(row.val_loss_epoch));
    EXPECT_GE(row.val_dice, 0.0);
    EXPECT_LE(row.val_dice, 1.0);
    EXPECT_GT(row.epoch_duration, 0.0);
    duration_sum += row.epoch_duration;
    if (i + 1 < rows.size()) {
      EXPECT_LT(row.val_dice, 0.9) << "training went on after reaching the target in epoch " << row.epoch;
    }
  }
  EXPECT_GE(rows.back().val_dice, 0.9);

  // result.json agrees with the CSV.
  std::ifstream result_file(run_dir / "result.json");
  const nlohmann::json result = nlohmann::json::parse(result_file);
  EXPECT_TRUE(result["converged"].get<bool>());
  EXPECT_EQ(result["epochs"].get<int>(), static_cast<int>(rows.size()));
  EXPECT_EQ(result["total_optimizer_steps"].get<std::int64_t>(), rows.back().total_optimizer_steps);
  EXPECT_NEAR(result["figure_of_merit_s"].get<double>(), duration_sum, 1e-6 * duration_sum);
  EXPECT_DOUBLE_EQ(result["final_val_dice"].get<double>(), rows.back().val_dice);
  // 2 levels and 3 output classes: 5,423,238 for 6 classes less 3 x (64 + 1) output-conv weights.
  EXPECT_EQ(result["parameter_count"].get<std::int64_t>(), 5423043);
  EXPECT_GT(result["median_minibatch_s"].get<double>(), 0.0);
  EXPECT_GT(result["train_samples_per_s"].get<double>(), 0.0);
  EXPECT_FALSE(result["host"].get<std::string>().empty());
  EXPECT_FALSE(result["libtorch_version"].get<std::string>().empty());

  // The learning rate follows the cosine schedule with T_0 = 4, T_mult = 1:
  // epoch e uses lr(e - 1) = 1e-4 + 9e-4 * (1 + cos(pi * ((e - 1) mod 4) / 4)) / 2.
  for (const auto& epoch : result["per_epoch"]) {
    const int e = epoch["epoch"].get<int>();
    const double expected = 1e-4 + 9e-4 * (1 + std::cos(std::numbers::pi * ((e - 1) % 4) / 4.0)) / 2;
    EXPECT_NEAR(epoch["learning_rate"].get<double>(), expected, 1e-12) << "epoch " << e;
  }

  // A second benchmark reuses the dataset: no new dataset directory appears.
  const fs::path dataset_root = dir.path() / "datasets";
  std::size_t datasets = 0;
  for (const auto& id_dir : fs::directory_iterator(dataset_root)) {
    for (const auto& entry : fs::directory_iterator(id_dir.path())) {
      datasets += entry.path().filename().string().front() != '.';  // skips the .lock file
    }
  }
  EXPECT_EQ(datasets, 1u);
}

TEST(EndToEnd, UnknownKeyNamesClosestValidKey) {
  TempDir dir("e2e_badkey");
  scaffold::write_file_atomic(dir.path() / "bad.yml", std::string_view("problem_scal: 4\n"));
  const CommandResult result = run_in(dir.path(), scaffold_command("benchmark -c bad.yml"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("problem_scal"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("did you mean 'problem_scale'"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir.path() / "benchmark_runs"));
}

TEST(EndToEnd, OutOfRangeValueNamesRange) {
  TempDir dir("e2e_range");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view("problem_scale: 4\n"));
  const CommandResult result = run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --unet-bottleneck-dim 4"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("unet_bottleneck_dim"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("[0, 3]"), std::string::npos) << result.output;
}

TEST(EndToEnd, RestartWithoutRunDirIsAnError) {
  TempDir dir("e2e_restart");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view("problem_scale: 4\n"));
  const CommandResult result = run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --restart"));
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("--run-dir"), std::string::npos) << result.output;
}

TEST(EndToEnd, MissingConfigFileIsNamed) {
  TempDir dir("e2e_missing");
  const CommandResult result = run_in(dir.path(), scaffold_command("generate_fractals -c nowhere.yml"));
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("nowhere.yml"), std::string::npos) << result.output;
}

TEST(EndToEnd, ValSplitZeroIsRejectedBeforeGeneration) {
  TempDir dir("e2e_valsplit");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view("problem_scale: 4\nval_split: 0\n"));
  const CommandResult result = run_in(dir.path(), scaffold_command("benchmark -c cfg.yml"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("val_split = 0"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir.path() / "datasets"));
  EXPECT_FALSE(fs::exists(dir.path() / "benchmark_runs"));
}

TEST(EndToEnd, InputNamedConfigYamlKeepsMergedConfig) {
  // An input file named config.yaml must not replace the run's merged config.
  TempDir dir("e2e_inputname");
  scaffold::write_file_atomic(dir.path() / "config.yaml",
                              std::string_view("problem_scale: 4\nn_categories: 1\nn_instances_used_per_fractal: 30\n"
                                               "unet_bottleneck_dim: 3\nwarmup_batches: 0\n"));
  const CommandResult result =
      run_in(dir.path(), scaffold_command("benchmark -c config.yaml --seed 3 --epochs 1 --base-run-dir runs"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const fs::path run_dir = only_run_dir(dir.path() / "runs");
  const std::string merged = scaffold::read_file(run_dir / "config.yaml");
  EXPECT_NE(merged.find("seed: 3"), std::string::npos) << merged;
  EXPECT_NE(merged.find("epochs: 1"), std::string::npos) << merged;
  EXPECT_EQ(scaffold::read_file(run_dir / "input1_config.yaml"), scaffold::read_file(dir.path() / "config.yaml"));
}

TEST(EndToEnd, BatchLargerThanSplitIsRejected) {
  TempDir dir("e2e_batch");
  scaffold::write_file_atomic(dir.path() / "cfg.yml",
                              std::string_view("problem_scale: 4\nn_categories: 1\nn_instances_used_per_fractal: 12\n"));
  // 4 volumes: 3 for training and 1 for validation.
  const CommandResult result = run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --local-batch-size 2"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("local_batch_size = 2"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir.path() / "datasets"));
}

TEST(EndToEnd, UnusableBaseRunDirIsNamedBeforeGeneration) {
  TempDir dir("e2e_basedir");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view("problem_scale: 4\n"));
  scaffold::write_file_atomic(dir.path() / "plainfile", std::string_view("x"));
  const CommandResult result = run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --base-run-dir plainfile/runs"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("base_run_dir"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir.path() / "datasets"));
}

TEST(EndToEnd, LibtorchBackendTrainsAnEpoch) {
  // oneDNN is the default, so LibTorch's own kernels need the option.
  TempDir dir("e2e_libtorch");
  scaffold::write_file_atomic(dir.path() / "cfg.yml",
                              std::string_view("problem_scale: 4\nunet_bottleneck_dim: 3\nn_categories: 1\n"
                                               "n_instances_used_per_fractal: 30\nwarmup_batches: 1\nepochs: 1\n"));
  const CommandResult result =
      run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --conv-backend libtorch --base-run-dir runs"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("CPU kernels: LibTorch's own convolutions"), std::string::npos) << result.output;
  std::ifstream result_file(only_run_dir(dir.path() / "runs") / "result.json");
  const nlohmann::json json = nlohmann::json::parse(result_file);
  EXPECT_EQ(json["conv_backend"].get<std::string>(), "libtorch");
  EXPECT_EQ(json["epochs"].get<int>(), 1);
  EXPECT_TRUE(std::isfinite(json["final_val_dice"].get<double>()));
}

TEST(EndToEnd, WarmupLeavesTrainingUnchanged) {
  // Warmup trains on real batches, then restores the model, so the epoch
  // statistics must match a run without warmup exactly (wall time aside).
  TempDir dir("e2e_warmup");
  scaffold::write_file_atomic(dir.path() / "cfg.yml",
                              std::string_view("problem_scale: 4\nunet_bottleneck_dim: 3\nn_categories: 1\n"
                                               "n_instances_used_per_fractal: 30\nepochs: 1\nmore_determinism: 1\n"));
  std::vector<std::string> stats;
  for (const char* warmup : {"0", "3"}) {
    const std::string base = std::string("runs_") + warmup;
    const CommandResult result =
        run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --warmup-batches " + std::string(warmup) +
                                            " --base-run-dir " + base));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    std::string rows;
    for (scaffold::EpochStats row : scaffold::read_train_stats(only_run_dir(dir.path() / base) / "train_stats.csv")) {
      row.epoch_duration = 0;
      rows += scaffold::format_stats_row(row) + "\n";
    }
    stats.push_back(rows);
  }
  EXPECT_EQ(stats[0], stats[1]);
  EXPECT_FALSE(stats[0].empty());
}
