#include "train/checkpoint.hpp"

#include <cerrno>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include "core/atomic_file.hpp"
#include "core/logging.hpp"
#include "core/trace.hpp"
#include "dataset/dataset.hpp"

namespace scaffold {

namespace fs = std::filesystem;

namespace {

// Bumped whenever the archive's keys or their meaning change.
constexpr std::int64_t kCheckpointFormat = 1;

constexpr const char* kLastName = "checkpoint_last.pt";
constexpr const char* kBestName = "checkpoint_best.pt";

// Columns of the history tensor: the ten train_stats.csv columns, the learning rate.
constexpr std::int64_t kHistoryColumns = 11;

torch::Tensor history_tensor(const std::vector<EpochStats>& history) {
  torch::Tensor table = torch::zeros({static_cast<std::int64_t>(history.size()), kHistoryColumns}, torch::kFloat64);
  auto rows = table.accessor<double, 2>();
  for (std::size_t i = 0; i < history.size(); ++i) {
    const EpochStats& s = history[i];
    const double values[kHistoryColumns] = {static_cast<double>(s.epoch), s.epoch_loss, s.overall_loss,
                                            s.val_loss_epoch, s.val_loss_avg, s.train_dice, s.val_dice,
                                            s.epoch_duration, static_cast<double>(s.optimizer_steps),
                                            static_cast<double>(s.total_optimizer_steps), s.learning_rate};
    for (std::int64_t c = 0; c < kHistoryColumns; ++c) {
      rows[static_cast<std::int64_t>(i)][c] = values[c];
    }
  }
  return table;
}

std::vector<EpochStats> history_rows(const torch::Tensor& table) {
  std::vector<EpochStats> history;
  const torch::Tensor contiguous = table.to(torch::kFloat64).contiguous();
  auto rows = contiguous.accessor<double, 2>();
  for (std::int64_t i = 0; i < contiguous.size(0); ++i) {
    EpochStats s;
    s.epoch = static_cast<int>(rows[i][0]);
    s.epoch_loss = rows[i][1];
    s.overall_loss = rows[i][2];
    s.val_loss_epoch = rows[i][3];
    s.val_loss_avg = rows[i][4];
    s.train_dice = rows[i][5];
    s.val_dice = rows[i][6];
    s.epoch_duration = rows[i][7];
    s.optimizer_steps = static_cast<std::int64_t>(rows[i][8]);
    s.total_optimizer_steps = static_cast<std::int64_t>(rows[i][9]);
    s.learning_rate = rows[i][10];
    history.push_back(s);
  }
  return history;
}

torch::Tensor scalar_i64(std::int64_t value) { return torch::tensor(value, torch::kInt64); }
torch::Tensor scalar_f64(double value) { return torch::tensor(value, torch::kFloat64); }

std::string read_string(torch::serialize::InputArchive& archive, const char* key) {
  c10::IValue value;
  archive.read(key, value);
  return value.toStringRef();
}

torch::Tensor read_tensor(torch::serialize::InputArchive& archive, const char* key) {
  torch::Tensor tensor;
  archive.read(key, tensor);
  return tensor;
}

}  // namespace

CheckpointIdentity checkpoint_identity(const Config& config, UNet& model) {
  return {dataset_config_id(config),
          fmt::format("unet layers={} classes={} groups={} params={}", model->layers(), model->n_classes(),
                      config.group_norm_groups, count_parameters(model))};
}

fs::path checkpoint_dir(const Config& config, const fs::path& run_dir) { return run_dir / config.checkpoint_dir; }

bool has_checkpoint(const fs::path& dir) { return fs::exists(dir / kLastName) || fs::exists(dir / kBestName); }

std::string encode_checkpoint(UNet& model, torch::optim::Optimizer& optimizer, const TrainingProgress& progress,
                              const CheckpointIdentity& identity) {
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
  archive.write("format", scalar_i64(kCheckpointFormat));
  archive.write("config_id", c10::IValue(identity.config_id));
  archive.write("model_signature", c10::IValue(identity.model_signature));
  archive.write("epoch", scalar_i64(progress.epoch));
  archive.write("total_optimizer_steps", scalar_i64(progress.total_optimizer_steps));
  archive.write("scheduler_epochs", scalar_i64(progress.scheduler_epochs));
  archive.write("val_dice", scalar_f64(progress.val_dice));
  archive.write("best_val_loss", scalar_f64(progress.best_val_loss));
  archive.write("step_seconds_total", scalar_f64(progress.step_seconds_total));
  archive.write("train_samples_total", scalar_i64(progress.train_samples_total));
  archive.write("history", history_tensor(progress.history));
  archive.write("epoch_median_step_s",
                torch::tensor(progress.epoch_median_step_s.empty() ? std::vector<double>{} : progress.epoch_median_step_s,
                              torch::kFloat64));
  archive.write("torch_cpu_generator", at::detail::getDefaultCPUGenerator().get_state());
  archive.write("world_size", scalar_i64(progress.world_size));

  std::ostringstream bytes;
  archive.save_to(bytes);
  return bytes.str();
}

void save_checkpoint(const fs::path& path, UNet& model, torch::optim::Optimizer& optimizer,
                     const TrainingProgress& progress, const CheckpointIdentity& identity) {
  fs::create_directories(path.parent_path());
  write_file_atomic(path, std::string_view(encode_checkpoint(model, optimizer, progress, identity)));
}

namespace {

// Restores a checkpoint archive; `label` names its source in messages.
TrainingProgress restore_checkpoint(torch::serialize::InputArchive& archive, const std::string& label, UNet& model,
                                    torch::optim::Optimizer& optimizer, const CheckpointIdentity& identity) {
  TrainingProgress progress;
  std::string config_id;
  std::string model_signature;
  try {
    const std::int64_t format = read_tensor(archive, "format").item<std::int64_t>();
    if (format != kCheckpointFormat) {
      throw CheckpointError(fmt::format("checkpoint {} has format {}, this program reads format {}; start a new run",
                                        label, format, kCheckpointFormat));
    }
    config_id = read_string(archive, "config_id");
    model_signature = read_string(archive, "model_signature");
  } catch (const CheckpointError&) {
    throw;
  } catch (const std::exception& error) {
    throw CheckpointError(fmt::format("checkpoint {} is incomplete or not a scaffold checkpoint: {}", label,
                                      std::string(error.what()).substr(0, 300)));
  }

  // Another config or model size is a user error, not a damaged file.
  if (config_id != identity.config_id) {
    throw std::runtime_error(fmt::format(
        "checkpoint {} belongs to dataset config {}, but this run's config is {}; resume with the run's own "
        "config.yaml or start a new run",
        label, config_id, identity.config_id));
  }
  if (model_signature != identity.model_signature) {
    throw std::runtime_error(fmt::format("checkpoint {} contains a different network ({}) than this run builds ({}); "
                                         "resume with the run's own config.yaml or start a new run",
                                         label, model_signature, identity.model_signature));
  }

  try {
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    model->load(model_archive);
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);

    progress.epoch = static_cast<int>(read_tensor(archive, "epoch").item<std::int64_t>());
    progress.total_optimizer_steps = read_tensor(archive, "total_optimizer_steps").item<std::int64_t>();
    progress.scheduler_epochs = read_tensor(archive, "scheduler_epochs").item<std::int64_t>();
    progress.val_dice = read_tensor(archive, "val_dice").item<double>();
    progress.best_val_loss = read_tensor(archive, "best_val_loss").item<double>();
    progress.step_seconds_total = read_tensor(archive, "step_seconds_total").item<double>();
    progress.train_samples_total = read_tensor(archive, "train_samples_total").item<std::int64_t>();
    progress.history = history_rows(read_tensor(archive, "history"));
    const torch::Tensor medians = read_tensor(archive, "epoch_median_step_s").to(torch::kFloat64).contiguous();
    progress.epoch_median_step_s.assign(medians.data_ptr<double>(), medians.data_ptr<double>() + medians.numel());
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(read_tensor(archive, "torch_cpu_generator"));
    // Checkpoints written before the rank count was recorded lack the key.
    torch::Tensor world_size;
    progress.world_size = archive.try_read("world_size", world_size) ? static_cast<int>(world_size.item<std::int64_t>()) : 0;
  } catch (const std::exception& error) {
    throw CheckpointError(fmt::format("checkpoint {} is damaged: {}", label,
                                      std::string(error.what()).substr(0, 300)));
  }

  if (progress.epoch < 1 || static_cast<int>(progress.history.size()) != progress.epoch) {
    throw CheckpointError(fmt::format("checkpoint {} is inconsistent: epoch {} with {} history rows", label,
                                      progress.epoch, progress.history.size()));
  }
  return progress;
}

}  // namespace

TrainingProgress load_checkpoint(const fs::path& path, UNet& model, torch::optim::Optimizer& optimizer,
                                 const CheckpointIdentity& identity) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path.string());
  } catch (const std::exception& error) {
    throw CheckpointError(fmt::format("checkpoint {} cannot be read: {}", path.string(),
                                      std::string(error.what()).substr(0, 300)));
  }
  return restore_checkpoint(archive, path.string(), model, optimizer, identity);
}

TrainingProgress load_checkpoint_bytes(const std::string& bytes, const std::string& label, UNet& model,
                                       torch::optim::Optimizer& optimizer, const CheckpointIdentity& identity) {
  torch::serialize::InputArchive archive;
  std::istringstream stream(bytes);
  try {
    archive.load_from(stream);
  } catch (const std::exception& error) {
    throw CheckpointError(fmt::format("checkpoint {} cannot be read: {}", label,
                                      std::string(error.what()).substr(0, 300)));
  }
  return restore_checkpoint(archive, label, model, optimizer, identity);
}

std::optional<TrainingProgress> load_latest_checkpoint(const fs::path& dir, UNet& model,
                                                       torch::optim::Optimizer& optimizer,
                                                       const CheckpointIdentity& identity) {
  for (const char* name : {kLastName, kBestName}) {
    const fs::path path = dir / name;
    if (!fs::exists(path)) {
      continue;
    }
    try {
      TrainingProgress progress = load_checkpoint(path, model, optimizer, identity);
      spdlog::info("resuming from {} (epoch {}, {} optimizer steps, validation Dice {:.4f})", path.string(),
                   progress.epoch, progress.total_optimizer_steps, progress.val_dice);
      return progress;
    } catch (const CheckpointError& error) {
      const fs::path quarantined = path.string() + ".corrupt";
      std::error_code rename_error;
      fs::rename(path, quarantined, rename_error);
      spdlog::warn("{}; renamed it to {} and trying the next checkpoint", error.what(), quarantined.string());
    }
  }
  if (fs::exists(dir / (std::string(kLastName) + ".corrupt")) || fs::exists(dir / (std::string(kBestName) + ".corrupt"))) {
    throw CheckpointError(fmt::format(
        "no readable checkpoint in {}: every checkpoint there is damaged (see the *.corrupt files); start a new run",
        dir.string()));
  }
  return std::nullopt;
}

CheckpointWriter::CheckpointWriter(const Config& config, const fs::path& run_dir, CheckpointIdentity identity)
    : interval_(config.checkpoint_interval), dir_(checkpoint_dir(config, run_dir)), identity_(std::move(identity)) {}

void CheckpointWriter::after_epoch(UNet& model, torch::optim::Optimizer& optimizer, TrainingProgress& progress,
                                   bool is_last_epoch) {
  if (interval_ <= 0 || progress.history.empty()) {
    return;
  }
  const EpochStats& stats = progress.history.back();
  if (stats.epoch % interval_ != 0 && !is_last_epoch) {
    return;
  }
  const TraceRegion region("checkpoint");

  // Best is judged among the saved epochs, as the reference does.
  const bool best = stats.val_loss_avg < progress.best_val_loss;
  if (best) {
    progress.best_val_loss = stats.val_loss_avg;
  }
  const std::string image = encode_checkpoint(model, optimizer, progress, identity_);
  fs::create_directories(dir_);
  static constexpr const char* kFaultPoints[] = {"checkpoint_write"};
  write_file_atomic(dir_ / kLastName, std::string_view(image), kFaultPoints);
  if (best) {
    write_file_atomic(dir_ / kBestName, std::string_view(image), kFaultPoints);
  }
  spdlog::debug("epoch {}: checkpoint written to {} ({} bytes{})", stats.epoch, dir_.string(), image.size(),
                best ? ", new best" : "");
}

}  // namespace scaffold
