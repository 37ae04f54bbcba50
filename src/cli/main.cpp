// The scaffold command: generate_fractals builds the fractal library,
// benchmark builds the dataset if needed and trains to the Dice target, show
// draws one volume and report summarises runs.
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <algorithm>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include "cli/report_command.hpp"
#include "cli/show_command.hpp"
#include "core/atomic_file.hpp"
#include "core/config.hpp"
#include "core/file_lock.hpp"
#include "core/hash.hpp"
#include "core/logging.hpp"
#include "core/progress.hpp"
#include "core/stop_signal.hpp"
#include "dataset/dataset.hpp"
#include "dist/launch.hpp"
#include "dist/process_group.hpp"
#include "fractal/library.hpp"
#include "scaffold/version.hpp"
#include "train/checkpoint.hpp"
#include "train/run_files.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;

namespace {

// A command-line option that overrides a config key when given.
struct OverrideOption {
  std::string key;
  std::string value;
  CLI::Option* option = nullptr;
};

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) {
    return "unknown";
  }
  return name;
}

scaffold::ConfigOverrides collect_overrides(const std::vector<OverrideOption>& options) {
  scaffold::ConfigOverrides overrides;
  for (const OverrideOption& option : options) {
    if (option.option != nullptr && option.option->count() > 0) {
      overrides.values[option.key] = option.value;
    }
  }
  return overrides;
}

void add_override(CLI::App& app, std::vector<OverrideOption>& options, const std::string& flag, const std::string& key,
                  const std::string& help) {
  options.push_back({key, "", nullptr});
  // Option storage must stay at a fixed address: `options` is reserved up front.
  options.back().option = app.add_option(flag, options.back().value, help);
}

// "[3, 1, 1]" from three numbers given on the command line.
void add_list_override(CLI::App& app, std::vector<OverrideOption>& options, std::vector<std::vector<int>>& storage,
                       const std::string& flag, const std::string& key, const std::string& help) {
  storage.emplace_back();
  options.push_back({key, "", nullptr});
  options.back().option = app.add_option(flag, storage.back(), help)->expected(3);
}

void log_figure_of_merit(const scaffold::Config& config, const scaffold::TrainingResult& result) {
  spdlog::info(
      "figure of merit depends on: problem_scale={} target_dice={} n_categories={} n_instances_used_per_fractal={} "
      "unet_bottleneck_dim={} optimizer={} starting_learning_rate={} min_learning_rate={} T_0={} T_mult={} "
      "disable_scheduler={} local_batch_size={} seed={}",
      config.problem_scale, config.target_dice, config.n_categories, config.n_instances_used_per_fractal,
      config.unet_bottleneck_dim, config.optimizer, config.starting_learning_rate, config.min_learning_rate,
      config.T_0, config.T_mult, config.disable_scheduler ? 1 : 0, config.local_batch_size, config.seed);
  if (result.converged) {
    spdlog::info("FOM: trained to validation Dice >= {} in {:.2f} s ({} epochs, {} optimizer steps, final Dice {:.4f})",
                 config.target_dice, result.figure_of_merit_s, result.epochs, result.total_optimizer_steps,
                 result.final_val_dice);
  } else {
    spdlog::warn("not converged: completed {} epochs in {:.2f} s ({} optimizer steps) with validation Dice {:.4f} < {}",
                 result.epochs, result.figure_of_merit_s, result.total_optimizer_steps, result.final_val_dice,
                 config.target_dice);
  }
}

nlohmann::json result_json(const scaffold::Config& config, const scaffold::DatasetInfo& dataset,
                           const scaffold::TrainingResult& result) {
  nlohmann::json json;
  json["figure_of_merit_s"] = result.figure_of_merit_s;
  json["converged"] = result.converged;
  json["target_dice"] = config.target_dice;
  json["final_val_dice"] = result.final_val_dice;
  json["epochs"] = result.epochs;
  json["total_optimizer_steps"] = result.total_optimizer_steps;
  json["median_minibatch_s"] = result.median_minibatch_s;
  json["train_samples_per_s"] = result.train_samples_per_s;
  json["parameter_count"] = result.parameter_count;
  json["problem_scale"] = config.problem_scale;
  json["vol_size"] = config.vol_size();
  json["unet_layers"] = config.unet_layers();
  json["n_categories"] = config.n_categories;
  json["local_batch_size"] = config.local_batch_size;
  json["world_size"] = result.world_size;
  json["global_batch_size"] = config.local_batch_size * result.world_size;
  json["comm_wait_s"] = result.comm_wait_s;
  json["compute_threads"] = result.compute_threads;
  json["dataset_dir"] = dataset.dir.string();
  json["config_id"] = dataset.config_id;
  json["host"] = host_name();
  json["scaffold_version"] = scaffold::kVersion;
  json["scaffold_commit"] = scaffold::kGitCommit;
  json["libtorch_version"] = TORCH_VERSION;
  json["device"] = "cpu";
  json["conv_backend"] = config.conv_backend;
  nlohmann::json epochs = nlohmann::json::array();
  for (const scaffold::EpochStats& row : result.history) {
    epochs.push_back({{"epoch", row.epoch},
                      {"learning_rate", row.learning_rate},
                      {"overall_loss", row.overall_loss},
                      {"val_loss_avg", row.val_loss_avg},
                      {"val_dice", row.val_dice},
                      {"epoch_duration", row.epoch_duration}});
  }
  json["per_epoch"] = epochs;
  return json;
}

// Stops every rank when the ranks loaded different configs (other files or
// other command-line options), before anything is generated. The message
// names both dataset config ids and the first merged-config line that differs.
void check_same_config(const scaffold::Config& config, scaffold::ProcessGroup& group) {
  if (group.size() == 1) {
    return;
  }
  const std::string yaml = scaffold::to_yaml(config);
  const std::vector<std::string> all = group.all_gather(yaml);
  for (std::size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) {
      continue;
    }
    // The first line of the merged configs that differs names the key.
    std::istringstream first(all[0]);
    std::istringstream other(all[r]);
    std::string line_first;
    std::string line_other;
    while (std::getline(first, line_first) && std::getline(other, line_other) && line_first == line_other) {
    }
    throw scaffold::DistributedError(
        "checking that all ranks use the same config",
        {{static_cast<int>(r),
          fmt::format("rank 0 has config id {} with '{}', but rank {} has config id {} with '{}'; start every rank "
                      "with the same config files and options",
                      scaffold::dataset_config_id(scaffold::load_config_text(all[0], "rank 0's config")), line_first,
                      r, scaffold::dataset_config_id(scaffold::load_config_text(all[r], "another rank's config")),
                      line_other)}},
        group.size());
  }
}

// The process group in the form data generation uses.
scaffold::RankShare rank_share(scaffold::ProcessGroup& group) {
  scaffold::RankShare share;
  share.rank = group.rank();
  share.size = group.size();
  share.sum = [&group](std::int64_t* values, std::size_t count) { group.all_reduce_sum(values, count); };
  share.broadcast = [&group](std::string& text) { group.broadcast(text, 0); };
  return share;
}

int run_generate(const std::vector<std::string>& config_files, const scaffold::ConfigOverrides& overrides,
                 int batch_size, scaffold::ProcessGroup& group) {
  std::vector<fs::path> files(config_files.begin(), config_files.end());
  const scaffold::Config config = scaffold::collective_try_typed(group, "reading the config", [&] {
    return scaffold::load_config(files, overrides);
  });
  check_same_config(config, group);
  // Generation makes collective calls of its own, so an error on one rank
  // cannot reach consensus: it ends the job through main's handler.
  scaffold::generate_fractal_library(config, batch_size, rank_share(group));
  return 0;
}

int run_generate_dataset(const std::vector<std::string>& config_files, const scaffold::ConfigOverrides& overrides,
                         scaffold::ProcessGroup& group) {
  const std::vector<fs::path> files(config_files.begin(), config_files.end());
  const scaffold::Config config = scaffold::collective_try_typed(group, "reading the config", [&] {
    return scaffold::load_config(files, overrides);
  });
  check_same_config(config, group);
  const scaffold::DatasetInfo dataset = scaffold::ensure_dataset(config, rank_share(group));
  spdlog::info("dataset ready: {}", dataset.dir.string());
  return 0;
}

// The launcher command that restarts a job of `world_size` ranks, guessed from
// the environment: srun under Slurm, flux run under Flux, otherwise mpiexec.
std::vector<std::string> restart_launcher(int world_size) {
  if (world_size <= 1) {
    return {};
  }
  const std::string ranks = std::to_string(world_size);
  if (std::getenv("SLURM_JOB_ID") != nullptr) {
    return {"srun", "-n", ranks};
  }
  if (std::getenv("FLUX_JOB_ID") != nullptr) {
    return {"flux", "run", "-n", ranks};
  }
  return {"mpiexec", "-n", ranks};
}

// All ranks build or find the dataset together, then check that they see the
// same config id and dataset manifest.
scaffold::DatasetInfo shared_dataset(const scaffold::Config& config, scaffold::ProcessGroup& group) {
  const scaffold::DatasetInfo dataset = scaffold::ensure_dataset(config, rank_share(group));
  const std::string manifest = scaffold::collective_try_typed(group, "reading the dataset manifest", [&] {
    return scaffold::dataset_manifest_hash(dataset);
  });
  if (group.size() == 1) {
    return dataset;
  }

  // Every rank compares every rank's values, so all ranks reach the same verdict.
  const std::string local = scaffold::dataset_config_id(config) + " " + manifest;
  const std::vector<std::string> all = group.all_gather(local);
  for (std::size_t r = 1; r < all.size(); ++r) {
    if (all[r] != all[0]) {
      throw scaffold::DistributedError(
          "checking that all ranks see the same config and dataset",
          {{static_cast<int>(r), fmt::format("rank 0 has config id and dataset manifest hash '{}', but rank {} has '{}'; "
                                             "give every rank the same config files and the same dataset_dir",
                                             all[0], r, all[r])}},
          group.size());
    }
  }
  spdlog::info("all {} ranks use config {} and dataset manifest {}", group.size(), dataset.config_id,
               manifest.substr(0, 12));
  return dataset;
}

fs::path executable_path(const char* argv0) {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::absolute(argv0) : self;
}

// Writes the files that describe a new run: the merged config, copies of the
// input files, the overrides and restart.sh.
void write_run_description(const fs::path& run_dir, const scaffold::Config& config, const std::vector<fs::path>& files,
                           const scaffold::ConfigOverrides& overrides, const fs::path& executable,
                           const std::vector<std::string>& launcher) {
  scaffold::write_file_atomic(run_dir / "config.yaml", scaffold::to_yaml(config));

  // Copies of the input files under their own names, unless a name is taken by
  // a run file or an earlier input: then "input<N>_<name>".
  std::set<std::string> taken = {"config.yaml", "overrides.yaml", "restart.sh", "train_stats.csv", "result.json"};
  for (std::size_t i = 0; i < files.size(); ++i) {
    std::string name = files[i].filename().string();
    if (taken.count(name) != 0) {
      name = fmt::format("input{}_{}", i + 1, name);
    }
    taken.insert(name);
    scaffold::write_file_atomic(run_dir / name, scaffold::read_file(files[i]));
  }
  std::string overrides_text;
  for (const auto& [key, value] : overrides.values) {
    overrides_text += fmt::format("{}: {}\n", key, value);
  }
  scaffold::write_file_atomic(run_dir / "overrides.yaml", overrides_text.empty() ? "{}\n" : overrides_text);
  scaffold::write_restart_script(run_dir, executable, launcher);
}

// The newest directory `<base_run_dir>/<job_name>_YYYYmmdd-HHMMSS[-N]` that
// contains a checkpoint; names sort by time because the timestamp is fixed-width.
std::optional<fs::path> latest_resumable_run(const scaffold::Config& config) {
  std::error_code error;
  if (!fs::is_directory(config.base_run_dir, error)) {
    return std::nullopt;
  }
  std::vector<fs::path> candidates;
  for (const auto& entry : fs::directory_iterator(config.base_run_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind(config.job_name + "_", 0) == 0 &&
        scaffold::has_checkpoint(entry.path() / config.checkpoint_dir)) {
      candidates.push_back(fs::absolute(entry.path()));
    }
  }
  if (candidates.empty()) {
    return std::nullopt;
  }
  return *std::max_element(candidates.begin(), candidates.end());
}

// The checks and decisions before training: the merged config, whether to
// resume and which run directory to use.
struct BenchmarkStart {
  scaffold::Config config;
  std::vector<fs::path> files;
  fs::path run_dir;
  bool resume = false;
};

BenchmarkStart prepare_benchmark(std::vector<std::string> config_files, const scaffold::ConfigOverrides& overrides,
                                 bool restart, const std::string& run_dir_arg, bool is_root) {
  // --run-dir resumes that run (with or without --restart); --restart alone has nothing to resume.
  if (restart && run_dir_arg.empty()) {
    throw scaffold::ConfigError("--restart needs --run-dir DIR naming the run directory to resume");
  }
  bool resume = !run_dir_arg.empty();
  fs::path run_dir;
  if (resume) {
    run_dir = fs::absolute(run_dir_arg);
    if (!fs::is_directory(run_dir)) {
      throw scaffold::ConfigError(fmt::format("--run-dir {}: no such run directory", run_dir.string()));
    }
    if (config_files.empty()) {
      config_files.push_back((run_dir / "config.yaml").string());
    }
  } else if (config_files.empty()) {
    throw scaffold::ConfigError("no config file: give one or more with -c FILE, or --run-dir DIR to resume a run");
  }

  std::vector<fs::path> files(config_files.begin(), config_files.end());
  scaffold::Config config = scaffold::load_config(files, overrides);

  // train_from_scratch: 0 continues the newest run of this job that has a
  // checkpoint; rank 0 decides and the caller broadcasts its choice.
  if (!resume && !config.train_from_scratch && is_root) {
    if (const std::optional<fs::path> latest = latest_resumable_run(config)) {
      spdlog::info("train_from_scratch is 0: continuing the newest run with a checkpoint, {}", latest->string());
      run_dir = *latest;
      resume = true;
    } else {
      spdlog::info("train_from_scratch is 0, but no run of job '{}' under {} has a checkpoint; starting a new run",
                   config.job_name, config.base_run_dir);
    }
  }
  const scaffold::VolumeCounts counts = scaffold::volume_counts(config);
  if (counts.validation == 0) {
    throw scaffold::ConfigError(fmt::format(
        "val_split = {} leaves no validation volume, so the Dice target can never be checked; the benchmark needs "
        "val_split > 0 (the reference default is 30)",
        config.val_split));
  }
  if (config.local_batch_size > counts.train || config.local_batch_size > counts.validation) {
    throw scaffold::ConfigError(fmt::format(
        "local_batch_size = {} is invalid for this dataset: it must not exceed the {} training or the {} validation "
        "volumes; lower it or add volumes (n_categories, n_instances_used_per_fractal)",
        config.local_batch_size, counts.train, counts.validation));
  }
  if (resume && config.checkpoint_interval <= 0) {
    // Resuming only makes sense with checkpoints; keep writing them from here on.
    config.checkpoint_interval = 1;
  }
  if (resume && is_root && !scaffold::has_checkpoint(run_dir / config.checkpoint_dir)) {
    throw scaffold::ConfigError(fmt::format(
        "cannot resume {}: it contains no checkpoint in {}/ (checkpoint_interval was -1, or the run stopped before its "
        "first checkpoint); start a new run without --run-dir",
        run_dir.string(), config.checkpoint_dir));
  }
  return {config, files, run_dir, resume};
}

int run_benchmark(std::vector<std::string> config_files, const scaffold::ConfigOverrides& overrides,
                  const fs::path& executable, bool restart, const std::string& run_dir_arg,
                  scaffold::ProcessGroup& group) {
  const bool root = group.is_root();
  BenchmarkStart start = scaffold::collective_try_typed(group, "reading the config", [&] {
    return prepare_benchmark(config_files, overrides, restart, run_dir_arg, root);
  });
  scaffold::Config& config = start.config;
  check_same_config(config, group);
  spdlog::info("scaffold {} ({}), LibTorch {}, host {}, {} rank{}", scaffold::kVersion, scaffold::kGitCommit,
               TORCH_VERSION, host_name(), group.size(), group.size() == 1 ? "" : "s");
  spdlog::info("problem_scale={} vol_size={} unet_layers={} n_categories={} point_num={}", config.problem_scale,
               config.vol_size(), config.unet_layers(), config.n_categories, config.point_num());

  // The run directory first, so a bad base_run_dir fails before any data is
  // generated; then the dataset (built when missing). Rank 0 decides and
  // writes; the other ranks learn the directory from it.
  std::optional<scaffold::FileLock> run_lock;
  std::string run_dir_text = scaffold::collective_try_typed(group, "creating the run directory", [&] {
    if (!root) {
      return std::string();
    }
    if (!start.resume) {
      try {
        start.run_dir = scaffold::create_run_dir(config);
      } catch (const scaffold::IoError& error) {
        throw scaffold::ConfigError(fmt::format("base_run_dir = '{}' is unusable: {}; choose a writable directory",
                                                config.base_run_dir, error.what()));
      }
      write_run_description(start.run_dir, config, start.files, overrides, executable,
                            restart_launcher(group.size()));
    }
    // One job at a time per run directory: a second resume waits here.
    run_lock.emplace(start.run_dir / ".lock", "training in this run directory");
    return (start.resume ? "1" : "0") + start.run_dir.string();
  });
  group.broadcast(run_dir_text, 0);
  start.resume = run_dir_text[0] == '1';
  start.run_dir = run_dir_text.substr(1);
  if (start.resume && config.checkpoint_interval <= 0) {
    config.checkpoint_interval = 1;
  }
  const fs::path& run_dir = start.run_dir;
  spdlog::info("run directory: {}", run_dir.string());

  const scaffold::DatasetInfo dataset = shared_dataset(config, group);

  // Only training checks for SIGINT and SIGTERM (after each step). Before it,
  // the default action ends the process, which data generation survives:
  // its files are written atomically and its staging directory is removed
  // by the next run.
  scaffold::install_stop_handlers();
  scaffold::TrainingResult result;
  try {
    result = scaffold::train_unet(config, dataset, run_dir, start.resume, group);
  } catch (const scaffold::StopRequested& stop) {
    spdlog::warn("stopped by {}; the last checkpoint is intact. Resume with: {}", scaffold::stop_signal_name(stop.signal_number),
                 (run_dir / "restart.sh").string());
    if (config.checkpoint_interval <= 0) {
      spdlog::warn("checkpoint_interval is -1, so this run wrote no checkpoint and cannot be resumed");
    }
    return 128 + stop.signal_number;
  }
  if (root) {
    scaffold::write_file_atomic(run_dir / "result.json", result_json(config, dataset, result).dump(2) + "\n");
  }
  log_figure_of_merit(config, result);
  spdlog::info("results in {}", run_dir.string());
  return result.converged || config.epochs != -1 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"scaffold: the Scale-free Fractal benchmark (3D fractal segmentation with a U-Net)"};
  app.require_subcommand(1);
  app.fallthrough();  // -v and -q also work after the subcommand
  int verbose = 0;
  bool quiet = false;
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  app.add_flag("-q,--quiet", quiet, "Only warnings, errors and the result");

  // generate_fractals
  CLI::App* generate = app.add_subcommand("generate_fractals", "Search fractal classes and write their instances");
  std::vector<std::string> generate_configs;
  int datagen_batch_size = 10000;
  generate->add_option("-c,--config", generate_configs, "YAML config file(s), merged in order")->required();
  generate->add_option("--datagen-batch-size", datagen_batch_size, "Candidate IFS attempts per search round")
      ->check(CLI::Range(1, 1 << 30));
  std::vector<OverrideOption> generate_overrides;
  generate_overrides.reserve(8);
  add_override(*generate, generate_overrides, "--problem-scale", "problem_scale", "Volume edge is 2^scale voxels");
  add_override(*generate, generate_overrides, "--n-categories", "n_categories", "Number of fractal classes");
  add_override(*generate, generate_overrides, "--fract-base-dir", "fract_base_dir", "Root of the fractal library");
  add_override(*generate, generate_overrides, "--seed", "seed", "Random seed");

  // generate_dataset
  CLI::App* generate_dataset =
      app.add_subcommand("generate_dataset", "Build the dataset (and the fractal library it needs) without training");
  std::vector<std::string> dataset_configs;
  generate_dataset->add_option("-c,--config", dataset_configs, "YAML config file(s), merged in order")->required();
  std::vector<OverrideOption> dataset_overrides;
  dataset_overrides.reserve(8);
  add_override(*generate_dataset, dataset_overrides, "--problem-scale", "problem_scale", "Volume edge is 2^scale voxels");
  add_override(*generate_dataset, dataset_overrides, "--n-categories", "n_categories", "Number of fractal classes");
  add_override(*generate_dataset, dataset_overrides, "--dataset-dir", "dataset_dir", "Root of the dataset cache");
  add_override(*generate_dataset, dataset_overrides, "--fract-base-dir", "fract_base_dir", "Root of the fractal library");
  add_override(*generate_dataset, dataset_overrides, "--seed", "seed", "Random seed");

  // benchmark
  CLI::App* benchmark = app.add_subcommand("benchmark", "Train the U-Net until the validation Dice target");
  std::vector<std::string> benchmark_configs;
  bool restart = false;
  std::string run_dir;
  benchmark->add_option("-c,--config", benchmark_configs,
                        "YAML config file(s); later files override earlier ones (default with --run-dir: its config.yaml)");
  benchmark->add_flag("--restart", restart, "Resume the run in --run-dir from its last checkpoint");
  benchmark->add_option("--run-dir", run_dir, "Existing run directory to resume");
  std::vector<OverrideOption> benchmark_overrides;
  benchmark_overrides.reserve(32);
  std::vector<std::vector<int>> list_storage;
  list_storage.reserve(4);
  add_override(*benchmark, benchmark_overrides, "--base-run-dir", "base_run_dir", "Parent of new run directories");
  add_override(*benchmark, benchmark_overrides, "--job-name", "job_name", "Prefix of the run directory name");
  add_override(*benchmark, benchmark_overrides, "--dataset-dir", "dataset_dir", "Root of the dataset cache");
  add_override(*benchmark, benchmark_overrides, "--fract-base-dir", "fract_base_dir", "Root of the fractal library");
  add_override(*benchmark, benchmark_overrides, "--n-categories", "n_categories", "Number of fractal classes");
  add_override(*benchmark, benchmark_overrides, "--n-instances-used-per-fractal", "n_instances_used_per_fractal",
               "Instances used per class");
  add_override(*benchmark, benchmark_overrides, "--problem-scale", "problem_scale", "Volume edge is 2^scale voxels");
  add_override(*benchmark, benchmark_overrides, "--unet-bottleneck-dim", "unet_bottleneck_dim",
               "log2 of the bottleneck edge");
  add_override(*benchmark, benchmark_overrides, "--seed", "seed", "Random seed");
  add_override(*benchmark, benchmark_overrides, "--local-batch-size,--batch-size", "local_batch_size",
               "Samples per optimizer step per process");
  add_override(*benchmark, benchmark_overrides, "--warmup-batches", "warmup_batches",
               "Untimed warmup batches before training");
  add_override(*benchmark, benchmark_overrides, "--group-norm-groups", "group_norm_groups", "GroupNorm groups");
  add_override(*benchmark, benchmark_overrides, "--dataloader-num-workers", "dataloader_num_workers",
               "Background reader threads (0: read in the training thread)");
  add_override(*benchmark, benchmark_overrides, "--optimizer", "optimizer", "ADAM or RMSProp");
  add_override(*benchmark, benchmark_overrides, "--epochs", "epochs", "Epoch cap (-1: none)");
  add_override(*benchmark, benchmark_overrides, "--starting-learning-rate", "starting_learning_rate",
               "Initial learning rate");
  add_override(*benchmark, benchmark_overrides, "--min-learning-rate", "min_learning_rate",
               "Minimum learning rate of the cosine schedule");
  add_override(*benchmark, benchmark_overrides, "--T-0", "T_0", "Epochs in the first cosine cycle");
  add_override(*benchmark, benchmark_overrides, "--T-mult", "T_mult", "Cosine cycle growth factor");
  add_override(*benchmark, benchmark_overrides, "--target-dice", "target_dice", "Validation Dice to reach");
  add_override(*benchmark, benchmark_overrides, "--conv-backend", "conv_backend",
               "CPU kernels: onednn (default: oneDNN convolutions, fused GroupNorm + ReLU) or libtorch");
  add_override(*benchmark, benchmark_overrides, "--checkpoint-interval", "checkpoint_interval",
               "Checkpoint every N epochs (-1: never)");
  add_override(*benchmark, benchmark_overrides, "--mlperf-log", "mlperf_log",
               "1 also writes MLPerf ':::MLLOG' lines to the log and to <run>/mllog.txt");
  std::vector<OverrideOption> shard_overrides;
  shard_overrides.reserve(2);
  add_list_override(*benchmark, shard_overrides, list_storage, "--dc-num-shards", "dc_num_shards",
                    "Spatial shards per dimension (three integers)");
  add_list_override(*benchmark, shard_overrides, list_storage, "--dc-shard-dims", "dc_shard_dims",
                    "Tensor dimensions to shard (three integers)");

  scaffold::ShowOptions show_options;
  CLI::App* show = scaffold::add_show_command(app, show_options);
  scaffold::ReportOptions report_options;
  CLI::App* report = scaffold::add_report_command(app, report_options);

  CLI11_PARSE(app, argc, argv);

  const scaffold::Verbosity verbosity =
      quiet ? scaffold::Verbosity::kQuiet : (verbose > 0 ? scaffold::Verbosity::kDebug : scaffold::Verbosity::kNormal);
  scaffold::setup_logging(verbosity, 0);

  // MPI starts only when a launcher started this process, so a plain start
  // needs no MPI runtime. A launch that contradicts MPI's world ends here,
  // before any file is written.
  std::unique_ptr<scaffold::ProcessGroup> group;
  try {
    const scaffold::LaunchInfo launch = scaffold::discover_launch();
    group = launch.rank || launch.size ? scaffold::ProcessGroup::init(&argc, &argv)
                                       : scaffold::ProcessGroup::create_local();
  } catch (const std::exception& error) {
    spdlog::error("{}", error.what());
    return 1;
  }
  if (group->size() > 1) {
    // Only rank 0 logs progress and warnings. The other ranks log errors (and
    // everything with -v), so a large job does not repeat each line per rank.
    scaffold::setup_logging(verbosity, group->rank());
    if (!group->is_root() && verbosity != scaffold::Verbosity::kDebug) {
      spdlog::set_level(spdlog::level::err);
    }
  }
  scaffold::set_progress_enabled(!quiet && group->is_root());

  try {
    if (generate->parsed()) {
      return run_generate(generate_configs, collect_overrides(generate_overrides), datagen_batch_size, *group);
    }
    if (generate_dataset->parsed()) {
      return run_generate_dataset(dataset_configs, collect_overrides(dataset_overrides), *group);
    }
    // show and report read files only: under a launcher, rank 0 does the work.
    if (show->parsed()) {
      return group->is_root() ? scaffold::run_show_command(show_options) : 0;
    }
    if (report->parsed()) {
      return group->is_root() ? scaffold::run_report_command(report_options) : 0;
    }

    scaffold::ConfigOverrides overrides = collect_overrides(benchmark_overrides);
    for (std::size_t i = 0; i < shard_overrides.size(); ++i) {
      if (!list_storage[i].empty()) {
        overrides.values[shard_overrides[i].key] =
            fmt::format("[{}, {}, {}]", list_storage[i][0], list_storage[i][1], list_storage[i][2]);
      }
    }
    return run_benchmark(benchmark_configs, overrides, executable_path(argv[0]), restart, run_dir, *group);
  } catch (const scaffold::DistributedError& error) {
    // Every rank has this error, so the job can end normally.
    if (group->is_root()) {
      spdlog::error("{}", error.what());
    }
    return 1;
  } catch (const scaffold::ConfigError& error) {
    if (group->size() > 1) {
      group->abort(fmt::format("invalid configuration: {}", error.what()), 2);
    }
    spdlog::error("invalid configuration: {}", error.what());
    return 2;
  } catch (const std::exception& error) {
    // An error on one rank: the others may wait in a collective, so end the job.
    if (group->size() > 1) {
      group->abort(error.what(), 1);
    }
    spdlog::error("{}", error.what());
    return 1;
  }
}
