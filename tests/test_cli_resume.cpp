// Checkpoint and resume through the real scaffold command: an interrupted run
// continued with restart.sh ends in the same state as an uninterrupted one.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "nn/unet.hpp"
#include "train/run_files.hpp"

namespace fs = std::filesystem;

extern char** environ;

using scaffold_test::CommandResult;
using scaffold_test::only_run_dir;
using scaffold_test::run_in;
using scaffold_test::scaffold_command;
using scaffold_test::TempDir;

namespace {


// 16^3 volumes, a 1-level U-Net, 14 training and 6 validation volumes; the
// Dice target is out of reach so every run trains exactly `epochs` epochs.
std::string tiny_config(int epochs) {
  return "seed: 5\n"
         "n_categories: 2\n"
         "n_instances_used_per_fractal: 30\n"
         "problem_scale: 4\n"
         "unet_bottleneck_dim: 3\n"
         "target_dice: 0.9999\n"
         "val_split: 30\n"
         "warmup_batches: 1\n"
         "checkpoint_interval: 1\n"
         "more_determinism: 1\n"
         "epochs: " +
         std::to_string(epochs) + "\n";
}


// The model parameters stored in a checkpoint, by name, read into the tiny
// config's network (1 level, 3 classes).
std::map<std::string, torch::Tensor> checkpoint_weights(const fs::path& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path.string());
  torch::serialize::InputArchive model_archive;
  archive.read("model", model_archive);
  scaffold::UNet model(3, 3, 1, 8);
  model->load(model_archive);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& item : model->named_parameters()) weights[item.key()] = item.value().detach().clone();
  return weights;
}

// train_stats.csv without the epoch_duration column, which is wall time.
std::string stats_without_durations(const fs::path& csv) {
  std::ostringstream out;
  for (scaffold::EpochStats row : scaffold::read_train_stats(csv)) {
    row.epoch_duration = 0;
    out << scaffold::format_stats_row(row) << "\n";
  }
  return out.str();
}

void expect_same_final_state(const fs::path& reference_run, const fs::path& resumed_run) {
  const auto expected = checkpoint_weights(reference_run / "checkpoints/checkpoint_last.pt");
  const auto actual = checkpoint_weights(resumed_run / "checkpoints/checkpoint_last.pt");
  ASSERT_EQ(expected.size(), actual.size());
  ASSERT_FALSE(expected.empty());
  for (const auto& [name, tensor] : expected) {
    ASSERT_TRUE(actual.count(name)) << name;
    EXPECT_TRUE(torch::equal(tensor, actual.at(name))) << "parameter " << name << " differs";
  }
  EXPECT_EQ(stats_without_durations(resumed_run / "train_stats.csv"),
            stats_without_durations(reference_run / "train_stats.csv"));
}

// Shared by the resume tests: the fractal library and an uninterrupted 3-epoch run.
class ResumeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("resume_suite");
    scaffold::write_file_atomic(dir_->path() / "tiny3.yml", tiny_config(3));
    scaffold::write_file_atomic(dir_->path() / "tiny2.yml", tiny_config(2));
    const CommandResult reference = run_in(dir_->path(), scaffold_command("benchmark -c tiny3.yml --base-run-dir reference"));
    ASSERT_EQ(reference.exit_code, 0) << reference.output;
    reference_run_ = new fs::path(only_run_dir(dir_->path() / "reference"));
  }
  static void TearDownTestSuite() {
    delete reference_run_;
    delete dir_;
  }

  static TempDir* dir_;
  static fs::path* reference_run_;
};

TempDir* ResumeTest::dir_ = nullptr;
fs::path* ResumeTest::reference_run_ = nullptr;

}  // namespace

TEST_F(ResumeTest, ContinuedRunMatchesUninterruptedRun) {
  // Two epochs, then restart.sh with the cap raised to three.
  const CommandResult first = run_in(dir_->path(), scaffold_command("benchmark -c tiny2.yml --base-run-dir continued"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const fs::path run = only_run_dir(dir_->path() / "continued");
  ASSERT_EQ(scaffold::read_train_stats(run / "train_stats.csv").size(), 2u);

  const CommandResult second = run_in(dir_->path(), "OMP_NUM_THREADS=2 bash '" + (run / "restart.sh").string() + "' --epochs 3");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("resuming from"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("epoch 3:"), std::string::npos) << second.output;
  EXPECT_EQ(second.output.find("epoch 2:"), std::string::npos) << "epoch 2 was trained again:\n" << second.output;
  expect_same_final_state(*reference_run_, run);
}

TEST_F(ResumeTest, KilledMidEpochResumesFromLastCheckpoint) {
  // 14 steps per epoch: step 20 is in epoch 2, after the checkpoint of epoch 1.
  const CommandResult killed =
      run_in(dir_->path(), "SCAFFOLD_FAULT=train_step:20 " + scaffold_command("benchmark -c tiny3.yml --base-run-dir killed"));
  ASSERT_NE(killed.exit_code, 0) << killed.output;
  const fs::path run = only_run_dir(dir_->path() / "killed");
  ASSERT_EQ(scaffold::read_train_stats(run / "train_stats.csv").size(), 1u) << killed.output;

  const CommandResult resumed = run_in(dir_->path(), "OMP_NUM_THREADS=2 bash '" + (run / "restart.sh").string() + "'");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_final_state(*reference_run_, run);
}

TEST_F(ResumeTest, KilledDuringCheckpointWriteResumes) {
  // The second checkpoint write (epoch 2) dies with half of it in the temporary
  // file; checkpoint_last.pt of epoch 1 must still be whole.
  const CommandResult killed = run_in(
      dir_->path(), "SCAFFOLD_FAULT=checkpoint_write:2 " + scaffold_command("benchmark -c tiny3.yml --base-run-dir ckpt"));
  ASSERT_NE(killed.exit_code, 0) << killed.output;
  const fs::path run = only_run_dir(dir_->path() / "ckpt");

  const CommandResult resumed = run_in(dir_->path(), "OMP_NUM_THREADS=2 bash '" + (run / "restart.sh").string() + "'");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming from"), std::string::npos) << resumed.output;
  expect_same_final_state(*reference_run_, run);
  for (const auto& entry : fs::directory_iterator(run / "checkpoints")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  }
}

TEST_F(ResumeTest, CorruptLastFallsBackToBest) {
  const fs::path copy = dir_->path() / "corrupt_run";
  fs::remove_all(copy);
  fs::copy(*reference_run_, copy, fs::copy_options::recursive);
  const fs::path last = copy / "checkpoints/checkpoint_last.pt";
  const fs::path best = copy / "checkpoints/checkpoint_best.pt";
  ASSERT_TRUE(fs::exists(best));
  fs::resize_file(last, fs::file_size(last) / 2);

  // The target is unreachable, so the resumed run trains on up to the cap.
  const CommandResult resumed = run_in(dir_->path(), scaffold_command("benchmark --run-dir '" + copy.string() + "' --epochs 3"));
  EXPECT_NE(resumed.output.find("checkpoint_last.pt"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find(".corrupt"), std::string::npos) << resumed.output;
  EXPECT_TRUE(fs::exists(copy / "checkpoints/checkpoint_last.pt.corrupt"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(scaffold::read_train_stats(copy / "train_stats.csv").size(), 3u);
}

TEST_F(ResumeTest, FinishedRunExitsAtOnce) {
  const fs::path copy = dir_->path() / "finished_run";
  fs::remove_all(copy);
  fs::copy(*reference_run_, copy, fs::copy_options::recursive);

  // Lowering the target below the reached Dice makes the run converged.
  const CommandResult resumed =
      run_in(dir_->path(), scaffold_command("benchmark --run-dir '" + copy.string() + "' --target-dice 0.01"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("nothing left to train"), std::string::npos) << resumed.output;
  EXPECT_EQ(resumed.output.find("epoch 4:"), std::string::npos) << resumed.output;
}

TEST_F(ResumeTest, StatsRowsAfterCheckpointAreDropped) {
  const fs::path copy = dir_->path() / "rows_run";
  fs::remove_all(copy);
  fs::copy(*reference_run_, copy, fs::copy_options::recursive);
  // A row from an epoch the checkpoint never saw, and then a missing file.
  std::ofstream(copy / "train_stats.csv", std::ios::app) << "4,1,1,1,1,0.5,0.5,1,14,56\n";

  const CommandResult resumed =
      run_in(dir_->path(), scaffold_command("benchmark --run-dir '" + copy.string() + "' --target-dice 0.01"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(scaffold::read_train_stats(copy / "train_stats.csv").size(), 3u);

  fs::remove(copy / "train_stats.csv");
  const CommandResult again =
      run_in(dir_->path(), scaffold_command("benchmark --run-dir '" + copy.string() + "' --target-dice 0.01"));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(stats_without_durations(copy / "train_stats.csv"),
            stats_without_durations(*reference_run_ / "train_stats.csv"));
}

TEST_F(ResumeTest, CheckpointOfOtherConfigIsRejected) {
  const CommandResult resumed = run_in(
      dir_->path(), scaffold_command("benchmark --run-dir '" + reference_run_->string() + "' --n-categories 3"));
  EXPECT_NE(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("checkpoint_last.pt belongs to dataset config"), std::string::npos) << resumed.output;
}

TEST_F(ResumeTest, RunDirWithoutCheckpointIsAnError) {
  const fs::path empty_run = dir_->path() / "no_checkpoint";
  fs::create_directories(empty_run);
  fs::copy_file(*reference_run_ / "config.yaml", empty_run / "config.yaml");
  const CommandResult resumed = run_in(dir_->path(), scaffold_command("benchmark --run-dir '" + empty_run.string() + "'"));
  EXPECT_EQ(resumed.exit_code, 2) << resumed.output;
  EXPECT_NE(resumed.output.find("contains no checkpoint"), std::string::npos) << resumed.output;
}

TEST_F(ResumeTest, SigintStopsCleanlyAndSaysHowToResume) {
  const fs::path log = dir_->path() / "sigint.log";
  const std::string command = "cd '" + dir_->path().string() + "' && export OMP_NUM_THREADS=2 && exec " +
                              std::string(SCAFFOLD_BINARY) + " benchmark -c tiny3.yml --base-run-dir interrupted > '" +
                              log.string() + "' 2>&1";
  pid_t pid = 0;
  const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
  ASSERT_EQ(::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char* const*>(argv), environ), 0);

  // Interrupt once the first epoch has been logged.
  bool epoch_seen = false;
  for (int i = 0; i < 1200 && !epoch_seen; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    epoch_seen = text.find("epoch 1:") != std::string::npos;
  }
  ASSERT_TRUE(epoch_seen);
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);

  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << text;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGINT) << text;
  EXPECT_NE(text.find("stopped by SIGINT"), std::string::npos) << text;
  EXPECT_NE(text.find("restart.sh"), std::string::npos) << text;

  // The run resumes to the same end state as the uninterrupted one.
  const fs::path run = only_run_dir(dir_->path() / "interrupted");
  const CommandResult resumed = run_in(dir_->path(), "OMP_NUM_THREADS=2 bash '" + (run / "restart.sh").string() + "'");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_final_state(*reference_run_, run);
}

TEST_F(ResumeTest, TrainFromScratchZeroContinuesNewestRun) {
  // Two runs of the job under one base directory; the newer one is continued.
  const fs::path base = dir_->path() / "continue_base";
  fs::remove_all(base);
  fs::create_directories(base);
  fs::copy(*reference_run_, base / "benchmark_20200101-000000", fs::copy_options::recursive);
  fs::copy(*reference_run_, base / "benchmark_20210101-000000", fs::copy_options::recursive);
  scaffold::write_file_atomic(dir_->path() / "continue.yml", tiny_config(3) + "train_from_scratch: 0\n");

  const CommandResult resumed = run_in(
      dir_->path(), scaffold_command("benchmark -c continue.yml --base-run-dir continue_base --target-dice 0.01"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("benchmark_20210101-000000"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("nothing left to train"), std::string::npos) << resumed.output;
  std::size_t runs = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(base)) ++runs;
  EXPECT_EQ(runs, 2u) << "a new run directory was created";
}

TEST_F(ResumeTest, StatsWithMissingColumnsAreRewritten) {
  const fs::path copy = dir_->path() / "columns_run";
  fs::remove_all(copy);
  fs::copy(*reference_run_, copy, fs::copy_options::recursive);
  scaffold::write_file_atomic(copy / "train_stats.csv", std::string_view("epoch,epoch_loss\n1,0.5\n"));

  const CommandResult resumed =
      run_in(dir_->path(), scaffold_command("benchmark --run-dir '" + copy.string() + "' --target-dice 0.01"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("train_stats.csv"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("rewriting it from the checkpoint"), std::string::npos) << resumed.output;
  EXPECT_EQ(stats_without_durations(copy / "train_stats.csv"),
            stats_without_durations(*reference_run_ / "train_stats.csv"));
}
