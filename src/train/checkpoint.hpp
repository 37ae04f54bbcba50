// Training checkpoints: checkpoint_last.pt and checkpoint_best.pt in
// <run_dir>/<checkpoint_dir>/. Each is one LibTorch archive with the model,
// the optimizer, the schedule position, the torch CPU generator state, the
// counters and the per-epoch history. It is written to a temporary file, synced
// and renamed, so a kill at any instant leaves the old or the new file whole.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config.hpp"
#include "nn/unet.hpp"
#include "train/run_files.hpp"

namespace scaffold {

// A checkpoint that cannot be used; the message names the file and the reason.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Everything besides the model and optimizer tensors that a resumed run needs.
struct TrainingProgress {
  int epoch = 0;                          // last completed epoch
  std::int64_t total_optimizer_steps = 0;
  std::int64_t scheduler_epochs = 0;      // LrScheduler::epochs_completed()
  double val_dice = 0;                    // validation Dice of `epoch`
  double best_val_loss = std::numeric_limits<double>::infinity();
  double step_seconds_total = 0;          // time inside training steps so far
  std::int64_t train_samples_total = 0;
  std::vector<EpochStats> history;        // one row per completed epoch
  std::vector<double> epoch_median_step_s;
  int world_size = 1;                     // ranks of the run that wrote the checkpoint (0: not recorded)
};

// Identity that a checkpoint must match to be loaded into this run: the dataset
// config id and the network's shape.
struct CheckpointIdentity {
  std::string config_id;
  std::string model_signature;  // e.g. "unet layers=2 classes=4 groups=8 params=5423108"
};

CheckpointIdentity checkpoint_identity(const Config& config, UNet& model);

std::filesystem::path checkpoint_dir(const Config& config, const std::filesystem::path& run_dir);

// Serialises and writes one checkpoint atomically.
void save_checkpoint(const std::filesystem::path& path, UNet& model, torch::optim::Optimizer& optimizer,
                     const TrainingProgress& progress, const CheckpointIdentity& identity);

// Loads one checkpoint into `model` and `optimizer` and restores the torch CPU
// generator. Throws CheckpointError naming the file when it is unreadable or
// belongs to another config or model.
TrainingProgress load_checkpoint(const std::filesystem::path& path, UNet& model, torch::optim::Optimizer& optimizer,
                                 const CheckpointIdentity& identity);

// The checkpoint file's bytes for the current state.
std::string encode_checkpoint(UNet& model, torch::optim::Optimizer& optimizer, const TrainingProgress& progress,
                              const CheckpointIdentity& identity);

// Like load_checkpoint, from bytes that encode_checkpoint produced (what rank 0
// broadcasts on resume); `label` names their source in messages.
TrainingProgress load_checkpoint_bytes(const std::string& bytes, const std::string& label, UNet& model,
                                       torch::optim::Optimizer& optimizer, const CheckpointIdentity& identity);

// Loads checkpoint_last, or checkpoint_best when the last one cannot be read;
// an unreadable file is renamed to <name>.corrupt with a warning. Returns
// nullopt when neither file exists. A checkpoint of another config or model
// is an error, not a fallback.
std::optional<TrainingProgress> load_latest_checkpoint(const std::filesystem::path& dir, UNet& model,
                                                       torch::optim::Optimizer& optimizer,
                                                       const CheckpointIdentity& identity);

// True when `dir` contains checkpoint_last.pt or checkpoint_best.pt.
bool has_checkpoint(const std::filesystem::path& dir);

// Decides when to write: checkpoint_last every `checkpoint_interval` epochs and
// at the last epoch, checkpoint_best whenever the validation loss is the lowest
// so far. Does nothing when the interval is -1.
class CheckpointWriter {
 public:
  CheckpointWriter(const Config& config, const std::filesystem::path& run_dir, CheckpointIdentity identity);

  // `progress` already includes the epoch just completed.
  void after_epoch(UNet& model, torch::optim::Optimizer& optimizer, TrainingProgress& progress, bool is_last_epoch);

 private:
  int interval_;
  std::filesystem::path dir_;
  CheckpointIdentity identity_;
};

}  // namespace scaffold
