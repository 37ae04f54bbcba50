// The benchmark's training loop: warmup, epochs of training and validation
// until the validation Dice reaches the target, and the figure of merit.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "dataset/dataset.hpp"
#include "dist/process_group.hpp"
#include "train/run_files.hpp"

namespace scaffold {

struct TrainingResult {
  bool converged = false;               // validation Dice reached target_dice
  int epochs = 0;                       // epochs completed in total
  std::int64_t total_optimizer_steps = 0;
  double figure_of_merit_s = 0;         // sum of epoch durations (the reference's total_train_time)
  double final_val_dice = 0;
  double median_minibatch_s = 0;        // median over epochs of the per-epoch median step time
  double train_samples_per_s = 0;       // training samples / time spent in training steps
  std::int64_t parameter_count = 0;
  int compute_threads = 0;
  int world_size = 1;
  double comm_wait_s = 0;               // time this rank waited for gradient all-reduces
  std::vector<EpochStats> history;
};

// Trains the U-Net of `config` on `dataset`, writing train_stats.csv, figures
// and checkpoints into `run_dir` (rank 0 only). With `resume`, continues from
// the run's last checkpoint, which rank 0 reads and broadcasts. With several
// ranks, each trains on its share of every epoch and gradients are averaged
// over ranks. Throws when a loss is not finite, and StopRequested after the
// current step when SIGINT or SIGTERM arrived (on any rank).
TrainingResult train_unet(const Config& config, const DatasetInfo& dataset, const std::filesystem::path& run_dir,
                          bool resume, ProcessGroup& group);

}  // namespace scaffold
