#include "train/checkpoint.hpp"

#include <sstream>
#include <string>

#include "core/atomic_file.hpp"
#include "core/logging.hpp"
#include "dataset/dataset.hpp"

namespace scaffold {

namespace fs = std::filesystem;

CheckpointWriter::CheckpointWriter(const Config& config, const fs::path& run_dir)
    : interval_(config.checkpoint_interval),
      config_id_(dataset_config_id(config)),
      dir_(run_dir / config.checkpoint_dir) {}

void CheckpointWriter::after_epoch(UNet& model, torch::optim::Optimizer& optimizer, const LrScheduler& scheduler,
                                   const EpochStats& stats, bool is_last_epoch) {
  if (interval_ <= 0) {
    return;
  }
  const bool best = stats.val_loss_avg < best_val_loss_;
  if (best) {
    best_val_loss_ = stats.val_loss_avg;
  }
  if (stats.epoch % interval_ != 0 && !is_last_epoch && !best) {
    return;
  }

  // Serialise model, optimizer and counters into one archive in memory.
  torch::serialize::OutputArchive archive;
  {
    torch::serialize::OutputArchive model_archive;
    model->save(model_archive);
    archive.write("model", model_archive);
  }
  {
    torch::serialize::OutputArchive optimizer_archive;
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
  }
  archive.write("epoch", torch::tensor(static_cast<std::int64_t>(stats.epoch)));
  archive.write("scheduler_epochs", torch::tensor(static_cast<std::int64_t>(scheduler.epochs_completed())));
  archive.write("total_optimizer_steps", torch::tensor(stats.total_optimizer_steps));
  archive.write("val_loss_avg", torch::tensor(stats.val_loss_avg, torch::kFloat64));
  archive.write("val_dice", torch::tensor(stats.val_dice, torch::kFloat64));
  archive.write("config_id", c10::IValue(config_id_));
  std::ostringstream bytes;
  archive.save_to(bytes);
  const std::string image = bytes.str();

  fs::create_directories(dir_);
  if (stats.epoch % interval_ == 0 || is_last_epoch) {
    write_file_atomic(dir_ / "checkpoint_last.pt", std::string_view(image));
  }
  if (best) {
    write_file_atomic(dir_ / "checkpoint_best.pt", std::string_view(image));
  }
  spdlog::debug("epoch {}: checkpoint written to {} ({} bytes{})", stats.epoch, dir_.string(), image.size(),
                best ? ", new best" : "");
}

}  // namespace scaffold
