// Training checkpoints: checkpoint_last and checkpoint_best in
// <run_dir>/<checkpoint_dir>/, each written to a temporary file and renamed.
#pragma once

#include <filesystem>
#include <limits>

#include <torch/torch.h>

#include "core/config.hpp"
#include "nn/unet.hpp"
#include "train/run_files.hpp"
#include "train/schedule.hpp"

namespace scaffold {

class CheckpointWriter {
 public:
  CheckpointWriter(const Config& config, const std::filesystem::path& run_dir);

  // Saves checkpoint_last every checkpoint_interval epochs and at the last epoch,
  // and copies it to checkpoint_best when the validation loss is the lowest so far.
  void after_epoch(UNet& model, torch::optim::Optimizer& optimizer, const LrScheduler& scheduler,
                   const EpochStats& stats, bool is_last_epoch);

 private:
  int interval_;
  std::string config_id_;
  std::filesystem::path dir_;
  double best_val_loss_ = std::numeric_limits<double>::infinity();
};

}  // namespace scaffold
