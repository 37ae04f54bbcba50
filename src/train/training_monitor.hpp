// Observers of the training loop that leave its results unchanged: the
// progress bar of each epoch, the trace regions around training, the
// PROFILE_TORCH step profiler and the MLPerf log (config key mlperf_log).
// The trainer calls one hook at each point of the loop.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "core/config.hpp"
#include "core/mlperf_log.hpp"
#include "core/progress.hpp"
#include "core/trace.hpp"
#include "dataset/dataset.hpp"
#include "dist/launch.hpp"
#include "train/profiler.hpp"

namespace scaffold {

class TrainingMonitor {
 public:
  // Reads the PROFILE_TORCH variables, and throws ConfigError for an invalid
  // one before any training. With mlperf_log on rank 0, starts
  // <run_dir>/mllog.txt with init_start and the run's settings
  // (global_batch_size, opt_base_learning_rate, seed, ...).
  TrainingMonitor(const Config& config, const DatasetInfo& dataset, const std::filesystem::path& run_dir);
  // Logs run_stop with status "aborted" when training started and run_stop
  // was not called (an exception or a stop signal), and writes the profile of
  // a window that training ended inside.
  ~TrainingMonitor();
  TrainingMonitor(const TrainingMonitor&) = delete;
  TrainingMonitor& operator=(const TrainingMonitor&) = delete;

  // Before the first epoch, after warmup: init_stop, run_start, the "train"
  // region, and the step profiler on local rank 0 when PROFILE_TORCH is set.
  void run_start();
  // After the epoch's loader exists: epoch_start, the "batch_loop" region and
  // the progress bar over `steps` training steps.
  void epoch_start(int epoch, int steps);
  // Around one training step: the "run_training_batch" region; step_end also
  // advances the progress bar and the profiler's step count.
  void step_start();
  void step_end();
  // After the last training step of the epoch: epoch_stop, eval_start.
  void train_steps_end();
  // After validation: eval_accuracy (the validation Dice), eval_stop; rewrites mllog.txt.
  void validation_end(double val_dice);
  // After the last epoch: run_stop with status "success" when the Dice target
  // was reached, else "aborted".
  void run_stop(bool converged);

 private:
  Config config_;
  std::filesystem::path run_dir_;
  LaunchInfo launch_;
  ProfileSettings profile_settings_;
  std::unique_ptr<MlperfLogger> mllog_;
  std::unique_ptr<StepProfiler> profiler_;
  std::optional<TraceRegion> train_region_;
  std::optional<TraceRegion> batch_loop_region_;
  std::optional<TraceRegion> step_region_;
  std::unique_ptr<Progress> epoch_progress_;
  int epoch_ = 0;
  bool running_ = false;  // between run_start and run_stop
};

}  // namespace scaffold
