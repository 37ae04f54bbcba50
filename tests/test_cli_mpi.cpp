// Tests of the real scaffold command started by mpiexec: data-parallel
// equivalence with a single process, resume across ranks, failures on one
// rank, launcher mismatches and rank-count-independent data generation.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "nn/unet.hpp"

namespace fs = std::filesystem;
using scaffold_test::CommandResult;
using scaffold_test::only_run_dir;
using scaffold_test::run_in;
using scaffold_test::TempDir;

namespace {

#ifdef SCAFFOLD_MPIEXEC
constexpr const char* kMpiexec = SCAFFOLD_MPIEXEC;
#else
constexpr const char* kMpiexec = "";
#endif

#define SKIP_WITHOUT_MPI()                                                            \
  if (std::string(kMpiexec).empty()) {                                                \
    GTEST_SKIP() << "this build has no MPI launcher (mpiexec was not found by CMake)"; \
  }

// 14 volumes at 16^3: 10 training and 4 validation, so two ranks with batch 1
// get exactly the samples that one process gets with batch 2.
constexpr const char* kConfig =
    "problem_scale: 4\n"
    "unet_bottleneck_dim: 3\n"
    "n_categories: 1\n"
    "n_instances_used_per_fractal: 42\n"
    "warmup_batches: 1\n"
    "more_determinism: 1\n"
    "dataloader_num_workers: 0\n"
    "checkpoint_interval: 1\n"
    "dataset_dir: data\n"
    "fract_base_dir: fractals\n";

// `ranks` copies of scaffold with `arguments`, one compute thread each.
std::string mpi_command(int ranks, const std::string& arguments) {
  return std::string("OMP_NUM_THREADS=1 ") + kMpiexec + " " + std::to_string(ranks) + " " + SCAFFOLD_BINARY + " " +
         arguments;
}

std::string single_command(const std::string& arguments) {
  return std::string("OMP_NUM_THREADS=1 ") + SCAFFOLD_BINARY + " " + arguments;
}

// The model parameters stored in a checkpoint, by name.
std::map<std::string, torch::Tensor> checkpoint_weights(const fs::path& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path.string());
  torch::serialize::InputArchive model_archive;
  archive.read("model", model_archive);
  scaffold::UNet model(3, 2, 1, 8, scaffold::ConvBackend::libtorch);
  model->load(model_archive);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& item : model->named_parameters()) {
    weights[item.key()] = item.value().detach().clone();
  }
  return weights;
}

// ||a - b|| / ||b - start|| over all parameters together (L2 norms): how far
// two runs from the same start ended apart, relative to how far they moved.
double relative_distance(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b,
                         const std::map<std::string, torch::Tensor>& start) {
  double apart = 0;
  double moved = 0;
  for (const auto& [name, tensor] : a) {
    apart += (tensor - b.at(name)).pow(2).sum().item<double>();
    moved += (b.at(name) - start.at(name)).pow(2).sum().item<double>();
  }
  return std::sqrt(apart / moved);
}

fs::path write_config(const TempDir& dir, const std::string& extra = "") {
  const fs::path path = dir.path() / "cfg.yml";
  scaffold::write_file_atomic(path, std::string(kConfig) + extra);
  return path;
}

TEST(CliMpi, TwoRanksMatchOneRankWithDoubleBatch) {
  SKIP_WITHOUT_MPI();
  TempDir dir("mpi_equivalence");
  write_config(dir, "epochs: 2\n");

  const CommandResult one =
      run_in(dir.path(), single_command("benchmark -c cfg.yml --local-batch-size 2 --base-run-dir one"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const CommandResult two =
      run_in(dir.path(), mpi_command(2, "benchmark -c cfg.yml --local-batch-size 1 --base-run-dir two"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  // Control: one process with batch 1 for one epoch takes as many steps (10)
  // from the same start, but on other batches.
  const CommandResult control = run_in(
      dir.path(), single_command("benchmark -c cfg.yml --local-batch-size 1 --epochs 1 --base-run-dir control"));
  ASSERT_EQ(control.exit_code, 0) << control.output;
  EXPECT_NE(two.output.find("data parallel: 2 ranks, local batch 1, global batch 2"), std::string::npos) << two.output;

  // Ten optimizer steps each: 5 per epoch.
  const fs::path one_dir = only_run_dir(dir.path() / "one");
  const fs::path two_dir = only_run_dir(dir.path() / "two");
  const std::string one_stats = scaffold::read_file(one_dir / "train_stats.csv");
  const std::string two_stats = scaffold::read_file(two_dir / "train_stats.csv");
  EXPECT_NE(one_stats.find(",5,10\n"), std::string::npos) << one_stats;
  EXPECT_NE(two_stats.find(",5,10\n"), std::string::npos) << two_stats;

  // Initial weights: the same seeded model before any step.
  torch::manual_seed(42);
  scaffold::UNet initial(3, 2, 1, 8, scaffold::ConvBackend::libtorch);
  std::map<std::string, torch::Tensor> start;
  for (const auto& item : initial->named_parameters()) start[item.key()] = item.value().detach();

  const auto a = checkpoint_weights(one_dir / "checkpoints" / "checkpoint_last.pt");
  const auto b = checkpoint_weights(two_dir / "checkpoints" / "checkpoint_last.pt");
  const auto c = checkpoint_weights(only_run_dir(dir.path() / "control") / "checkpoints" / "checkpoint_last.pt");
  ASSERT_EQ(a.size(), b.size());
  const double equivalent = relative_distance(a, b, start);
  const double different = relative_distance(c, b, start);
  std::cout << "relative weight distance: 2 ranks x 1 vs 1 rank x 2: " << equivalent
            << "; control run on other batches: " << different << "\n";

  // Tolerance: the weighted cross-entropy divides by the sum of the class
  // weights of the voxels in the batch. Two ranks divide by each sample's own
  // sum and average the gradients, as torch DDP and the reference do; one
  // process divides by the sum over both samples. The gradients differ by a
  // few percent, and Adam turns near-zero gradients into full steps of either
  // sign. Everything else (sample order, class weights, initial weights, Dice
  // loss) is the same, so the runs must end far closer than runs on other
  // batches do.
  EXPECT_LT(equivalent, 0.2) << "relative distance 2 ranks x 1 vs 1 rank x 2";
  EXPECT_GT(different, 3 * equivalent) << "relative distance of the control run " << different
                                       << ", of the equivalent runs " << equivalent;
}

TEST(CliMpi, ResumeOnTwoRanksMatchesUninterruptedRun) {
  SKIP_WITHOUT_MPI();
  TempDir dir("mpi_resume");
  write_config(dir);

  const CommandResult full = run_in(dir.path(), mpi_command(2, "benchmark -c cfg.yml --epochs 2 --base-run-dir full"));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  const CommandResult first = run_in(dir.path(), mpi_command(2, "benchmark -c cfg.yml --epochs 1 --base-run-dir part"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const fs::path part_dir = only_run_dir(dir.path() / "part");

  // restart.sh starts the same number of ranks; SCAFFOLD_LAUNCHER adds the
  // launcher options this machine needs.
  const std::string script = scaffold::read_file(part_dir / "restart.sh");
  EXPECT_NE(script.find("launcher=('mpiexec' '-n' '2')"), std::string::npos) << script;

  const CommandResult resumed =
      run_in(dir.path(), std::string("OMP_NUM_THREADS=1 SCAFFOLD_LAUNCHER='") + kMpiexec + " 2' bash '" +
                             (part_dir / "restart.sh").string() + "' --epochs 2");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming from"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("data parallel: 2 ranks"), std::string::npos) << resumed.output;

  const auto a = checkpoint_weights(only_run_dir(dir.path() / "full") / "checkpoints" / "checkpoint_last.pt");
  const auto b = checkpoint_weights(part_dir / "checkpoints" / "checkpoint_last.pt");
  for (const auto& [name, tensor] : a) {
    EXPECT_TRUE(torch::equal(tensor, b.at(name))) << name;
  }
  // One process resuming a 2-rank checkpoint halves the global batch and warns.
  const CommandResult single = run_in(
      dir.path(), single_command("benchmark --run-dir " + only_run_dir(dir.path() / "full").string() + " --epochs 3"));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  EXPECT_NE(single.output.find("written by a run of 2 ranks and this run has 1, so the global batch changes from 2 "
                               "to 1 samples per step"),
            std::string::npos)
      << single.output;
}

TEST(CliMpi, FailureOnOneRankStopsTheJob) {
  SKIP_WITHOUT_MPI();
  TempDir dir("mpi_failure");
  write_config(dir, "epochs: 3\n");
  // Build the dataset first, so the failure hits training.
  ASSERT_EQ(run_in(dir.path(), single_command("generate_dataset -c cfg.yml")).exit_code, 0);

  // Rank 1's fifth sample read fails with EIO; rank 0 is healthy and would
  // otherwise wait for rank 1's gradients.
  const std::string arguments = "benchmark -c cfg.yml --base-run-dir runs";
  const std::string mpmd = std::string("OMP_NUM_THREADS=1 ") + kMpiexec + " 1 " + SCAFFOLD_BINARY + " " + arguments +
                           " : -n 1 env SCAFFOLD_FAULT=sample_read:5:EIO " + SCAFFOLD_BINARY + " " + arguments;
  const CommandResult result = run_in(dir.path(), mpmd);
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("rank 1 ends the job"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("Input/output error"), std::string::npos) << result.output;
}

TEST(CliMpi, DifferentConfigsStopBeforeGeneration) {
  SKIP_WITHOUT_MPI();
  TempDir dir("mpi_config_mismatch");
  write_config(dir);
  // Rank 1 gets another seed, so its dataset config id differs.
  const std::string arguments = "benchmark -c cfg.yml --base-run-dir runs";
  const std::string mpmd = std::string("OMP_NUM_THREADS=1 ") + kMpiexec + " 1 " + SCAFFOLD_BINARY + " " + arguments +
                           " : -n 1 " + SCAFFOLD_BINARY + " " + arguments + " --seed 7";
  const CommandResult result = run_in(dir.path(), mpmd);
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("checking that all ranks use the same config failed on rank 1: rank 0 has config id"),
            std::string::npos)
      << result.output;
  // The message names the line that differs.
  EXPECT_NE(result.output.find("with 'seed: 42'"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("with 'seed: 7'"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir.path() / "data"));
  EXPECT_FALSE(fs::exists(dir.path() / "fractals"));
}

TEST(CliMpi, LaunchMismatchStopsBeforeWritingAnything) {
  SKIP_WITHOUT_MPI();
  TempDir dir("mpi_mismatch");
  write_config(dir);
  const CommandResult result =
      run_in(dir.path(), "WORLD_SIZE=3 " + mpi_command(2, "benchmark -c cfg.yml --base-run-dir runs"));
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("launcher reports a world size of 3"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir.path() / "runs"));
  EXPECT_FALSE(fs::exists(dir.path() / "data"));
}

// Every file under `root` by relative path, with the dataset directory's
// timestamped name replaced by "DATASET" and meta.yaml's creation time dropped.
std::map<std::string, std::string> tree_contents(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    std::string relative = fs::relative(entry.path(), root).string();
    std::string text = scaffold::read_file(entry.path());
    if (relative.rfind("data/", 0) == 0) {
      // data/<config id>/<YYYYmmdd-HHMMSS>__<commit>/...
      const std::size_t id_end = relative.find('/', 5);
      const std::size_t stamp_end = relative.find('/', id_end + 1);
      if (stamp_end != std::string::npos) relative = relative.substr(0, id_end + 1) + "DATASET" + relative.substr(stamp_end);
    }
    if (entry.path().filename() == "meta.yaml") {
      std::string kept;
      std::size_t start = 0;
      while (start < text.size()) {
        const std::size_t end = text.find('\n', start);
        const std::string line = text.substr(start, end == std::string::npos ? std::string::npos : end - start + 1);
        if (line.rfind("created", 0) != 0) kept += line;
        start = end == std::string::npos ? text.size() : end + 1;
      }
      text = kept;
    }
    files[relative] = text;
  }
  return files;
}

TEST(CliMpi, GenerationSameForOneTwoThreeRanks) {
  SKIP_WITHOUT_MPI();
  std::map<std::string, std::string> expected;
  for (int ranks : {1, 2, 3}) {
    TempDir dir("mpi_generation_" + std::to_string(ranks));
    // Three classes and a small round size, so that the class search takes
    // several rounds whose candidates are dealt out over the ranks.
    scaffold::write_file_atomic(dir.path() / "cfg.yml",
                                std::string_view("problem_scale: 4\nn_categories: 3\nn_instances_used_per_fractal: 15\n"
                                                 "dataset_dir: data\nfract_base_dir: fractals\n"));
    const std::string generate = "generate_fractals -c cfg.yml --datagen-batch-size 2";
    const CommandResult library =
        run_in(dir.path(), ranks == 1 ? single_command(generate) : mpi_command(ranks, generate));
    ASSERT_EQ(library.exit_code, 0) << library.output;
    // A fresh dataset of a library made by the same rank count.
    const CommandResult dataset = run_in(dir.path(), ranks == 1 ? single_command("generate_dataset -c cfg.yml")
                                                                : mpi_command(ranks, "generate_dataset -c cfg.yml"));
    ASSERT_EQ(dataset.exit_code, 0) << dataset.output;
    fs::remove(dir.path() / "cfg.yml");

    const std::map<std::string, std::string> files = tree_contents(dir.path());
    if (ranks == 1) {
      expected = files;
      // 3 class CSVs, 3 x 145 instances, 15 volumes and 15 masks at least.
      EXPECT_GT(files.size(), 3u + 435u + 30u);
      continue;
    }
    EXPECT_EQ(files.size(), expected.size()) << ranks << " ranks";
    for (const auto& [name, text] : expected) {
      const auto found = files.find(name);
      ASSERT_NE(found, files.end()) << name << " is missing with " << ranks << " ranks";
      EXPECT_TRUE(found->second == text) << name << " differs with " << ranks << " ranks";
    }
  }
}

}  // namespace
