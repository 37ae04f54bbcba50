#include "train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/torch.h>

#include "core/logging.hpp"
#include "nn/unet.hpp"
#include "report/run_figures.hpp"
#include "core/atomic_file.hpp"
#include "core/fault_injection.hpp"
#include "core/stop_signal.hpp"
#include "core/progress.hpp"
#include "core/trace.hpp"
#include "train/checkpoint.hpp"
#include "train/data_loader.hpp"
#include "train/loss.hpp"
#include "train/schedule.hpp"
#include "train/threads.hpp"
#include "train/training_monitor.hpp"

namespace scaffold {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Gradient norms above this are scaled down before each optimizer step.
constexpr double kMaxGradNorm = 1.0;

// Batches the background loader reads ahead of the training loop.
constexpr int kPrefetchBatches = 2;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  if (values.empty()) {
    return 0.0;
  }
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

// Training masks at evenly spaced positions of the sorted id list (numpy's
// linspace over [0, n - 1] truncated to int), max(1, ceil(fraction * n)) of them.
std::vector<int> class_weight_sample_ids(const std::vector<int>& train_ids, double fraction) {
  const auto n = static_cast<std::int64_t>(train_ids.size());
  const auto count = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(fraction * static_cast<double>(n))));
  std::vector<int> ids;
  for (std::int64_t i = 0; i < count; ++i) {
    const double position = count == 1 ? 0.0 : static_cast<double>(i) * static_cast<double>(n - 1) / static_cast<double>(count - 1);
    ids.push_back(train_ids[static_cast<std::size_t>(position)]);
  }
  return ids;
}

torch::Tensor estimate_class_weights(const Config& config, const DatasetInfo& dataset) {
  const std::vector<int> ids = class_weight_sample_ids(dataset.train_ids, config.ce_weight_sample_fraction);
  std::int64_t background = 0;
  std::int64_t foreground = 0;
  for (const int id : ids) {
    const Batch batch = read_batch(dataset, Split::kTraining, {id});
    const std::int64_t bg = (batch.mask == 0).sum().item<std::int64_t>();
    background += bg;
    foreground += batch.mask.numel() - bg;
  }
  torch::Tensor weights = class_weights_from_counts(background, foreground, dataset.n_classes);
  spdlog::info("class weights from {} training masks: background={:.4g} foreground={:.4g} ({} / {} voxels)",
               ids.size(), weights[0].item<double>(), weights[1].item<double>(), background, foreground);
  return weights;
}

void check_finite(double value, const char* what, int epoch) {
  if (!std::isfinite(value)) {
    throw std::runtime_error(fmt::format(
        "{} is not finite ({}) in epoch {}; training diverged. Lower starting_learning_rate or check the dataset",
        what, value, epoch));
  }
}

// Rewrites the run's figures from the epochs so far; cheap enough for every epoch.
void write_figures(const Config& config, const fs::path& run_dir, const std::vector<EpochStats>& history) {
  std::vector<EpochFigureRow> rows;
  for (const EpochStats& stats : history) {
    rows.push_back({stats.epoch, stats.overall_loss, stats.val_loss_avg, stats.val_dice, stats.learning_rate,
                    stats.epoch_duration});
  }
  write_run_figures(run_dir, rows, {config.vol_size(), config.n_categories, config.unet_layers(), config.target_dice});
}

struct StepOutput {
  double loss = 0;
  double soft_dice = 0;
};

// One optimizer step on `batch`: forward, loss, backward, clip, update.
StepOutput train_step(UNet& model, torch::optim::Optimizer& optimizer, const Batch& batch,
                      const torch::Tensor& class_weights) {
  // logits: [B, n_classes, D, H, W]
  TraceRegion region("predict");
  const torch::Tensor logits = model->forward(batch.volume);
  region.next("calculate_loss");
  const LossTerms terms = segmentation_loss(logits, batch.mask, class_weights);

  region.next("backward");
  optimizer.zero_grad();
  terms.loss.backward();
  region.next("step_and_update");
  clip_grad_norm(model->parameters(), kMaxGradNorm);
  optimizer.step();

  return {terms.loss.item<double>(), terms.soft_dice.item<double>()};
}

struct ValidationOutput {
  double loss_sum = 0;  // sum of batch loss x batch size
  double dice_sum = 0;  // sum of per-sample hard Dice
  int samples = 0;
};

ValidationOutput validate_batch(UNet& model, const Batch& batch, const torch::Tensor& class_weights) {
  const torch::Tensor logits = model->forward(batch.volume);
  const LossTerms terms = segmentation_loss(logits, batch.mask, class_weights);
  const torch::Tensor dice = hard_dice_per_sample(logits, batch.mask);
  return {terms.loss.item<double>() * batch.size(), dice.sum().item<double>(), batch.size()};
}

ValidationOutput run_validation(UNet& model, const Config& config, const DatasetInfo& dataset,
                                const torch::Tensor& class_weights, int max_batches) {
  const TraceRegion region("evaluate");
  torch::NoGradGuard no_grad;
  model->eval();
  ValidationOutput total;
  PrefetchLoader loader(dataset, Split::kValidation, dataset.val_ids, config.local_batch_size,
                        config.dataloader_num_workers > 0 ? kPrefetchBatches : 0);
  Progress progress_bar("validation", max_batches >= 0 ? std::min(max_batches, loader.batch_count()) : loader.batch_count(),
                        "batches", {.keep_bar = false});
  int batches = 0;
  while (auto batch = loader.next()) {
    if (max_batches >= 0 && batches >= max_batches) {
      break;
    }
    const ValidationOutput part = validate_batch(model, *batch, class_weights);
    total.loss_sum += part.loss_sum;
    total.dice_sum += part.dice_sum;
    total.samples += part.samples;
    ++batches;
    progress_bar.advance();
  }
  model->train();
  return total;
}

// Runs up to warmup_batches training and validation batches, plus one step of
// the ragged final batch size, so that allocator pools and kernel choices are
// warm before timing starts. The model is restored afterwards and the optimizer
// rebuilt, so warmup does not change the trajectory.
void warm_up(UNet& model, const Config& config, const DatasetInfo& dataset, const torch::Tensor& class_weights) {
  if (config.warmup_batches <= 0) {
    return;
  }
  const TraceRegion region("warmup");
  const Clock::time_point start = Clock::now();

  // Snapshot every parameter and buffer, and the torch CPU generator.
  const torch::Tensor generator_state = at::detail::getDefaultCPUGenerator().get_state();
  std::vector<torch::Tensor> saved;
  {
    torch::NoGradGuard no_grad;
    for (const auto& tensor : model->parameters()) {
      saved.push_back(tensor.detach().clone());
    }
    for (const auto& tensor : model->buffers()) {
      saved.push_back(tensor.detach().clone());
    }
  }
  auto optimizer = make_optimizer(config.optimizer, model->parameters(), config.starting_learning_rate);

  // Training batches, then the ragged batch size if the last batch is short.
  const std::vector<int> order = epoch_order(dataset.train_ids, static_cast<std::uint64_t>(config.seed), 0);
  const int batch_size = config.local_batch_size;
  int steps = 0;
  int samples = 0;
  for (std::size_t begin = 0; begin + static_cast<std::size_t>(batch_size) <= order.size() &&
                              steps < config.warmup_batches;
       begin += static_cast<std::size_t>(batch_size), ++steps) {
    const std::vector<int> ids(order.begin() + static_cast<std::ptrdiff_t>(begin),
                               order.begin() + static_cast<std::ptrdiff_t>(begin) + batch_size);
    train_step(model, *optimizer, read_batch(dataset, Split::kTraining, ids), class_weights);
    samples += batch_size;
  }
  const std::size_t ragged = order.size() % static_cast<std::size_t>(batch_size);
  if (ragged != 0) {
    const std::vector<int> ids(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(ragged));
    train_step(model, *optimizer, read_batch(dataset, Split::kTraining, ids), class_weights);
    samples += static_cast<int>(ragged);
  }

  const ValidationOutput validation = run_validation(model, config, dataset, class_weights, config.warmup_batches);

  // Restore the snapshot.
  {
    torch::NoGradGuard no_grad;
    std::size_t i = 0;
    for (auto& tensor : model->parameters()) {
      tensor.copy_(saved[i++]);
      tensor.mutable_grad() = torch::Tensor();
    }
    for (auto& tensor : model->buffers()) {
      tensor.copy_(saved[i++]);
    }
  }
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(generator_state);
  spdlog::info("warmup: {} training and {} validation samples in {:.2f} s (state restored)", samples,
               validation.samples, seconds_since(start));
}

}  // namespace

namespace {

// Rebuilds train_stats.csv from the checkpoint's history, so rows of epochs
// after the checkpoint are dropped and a missing file or header is rewritten.
void restore_train_stats(const fs::path& stats_path, const std::vector<EpochStats>& history) {
  if (fs::exists(stats_path)) {
    try {
      const std::vector<EpochStats> on_disk = read_train_stats(stats_path);
      if (on_disk.size() > history.size()) {
        spdlog::info("train_stats.csv: dropping {} rows of epochs after the checkpoint", on_disk.size() - history.size());
      }
    } catch (const std::exception& error) {
      spdlog::warn("{}; rewriting it from the checkpoint", error.what());
    }
  } else {
    spdlog::warn("{} is missing; rewriting it from the checkpoint", stats_path.string());
  }
  write_train_stats(stats_path, history);
}

void fill_result(TrainingResult& result, const Config& config, const TrainingProgress& progress) {
  result.converged = progress.val_dice >= config.target_dice;
  result.epochs = progress.epoch;
  result.total_optimizer_steps = progress.total_optimizer_steps;
  result.figure_of_merit_s = 0;
  for (const EpochStats& row : progress.history) {
    result.figure_of_merit_s += row.epoch_duration;
  }
  result.final_val_dice = progress.val_dice;
  result.median_minibatch_s = median(progress.epoch_median_step_s);
  result.train_samples_per_s = progress.step_seconds_total > 0
                                   ? static_cast<double>(progress.train_samples_total) / progress.step_seconds_total
                                   : 0.0;
  result.history = progress.history;
}

}  // namespace

TrainingResult train_unet(const Config& config, const DatasetInfo& dataset, const fs::path& run_dir, bool resume) {
  TrainingResult result;
  TrainingMonitor monitor(config, dataset, run_dir);
  result.compute_threads = configure_compute_threads();
  if (config.more_determinism) {
    // Deterministic kernels where LibTorch has a choice; warn instead of failing where it has none.
    at::globalContext().setDeterministicAlgorithms(true, true);
  }
  if (config.torch_amp) {
    spdlog::info("torch_amp: bf16 autocast applies to CUDA only; CPU training runs in float32");
  }
  if (dataset.train_ids.empty()) {
    throw std::runtime_error(fmt::format("dataset {} has no training volumes", dataset.dir.string()));
  }
  if (dataset.val_ids.empty()) {
    throw std::runtime_error(fmt::format(
        "dataset {} has no validation volumes, so the Dice target can never be checked; raise val_split",
        dataset.dir.string()));
  }

  // Model, seeded so that initial weights depend only on the seed.
  torch::manual_seed(static_cast<std::uint64_t>(config.seed));
  const ConvBackend backend = config.conv_backend == "libtorch" ? ConvBackend::libtorch : ConvBackend::onednn;
  UNet model(3, dataset.n_classes, config.unet_layers(), config.group_norm_groups, backend);
  result.parameter_count = count_parameters(model);
  spdlog::info("convolutions: {}", config.conv_backend == "libtorch" ? "LibTorch's own kernels" : "oneDNN, called directly");
  spdlog::info("U-Net: {} levels, {} classes, {} parameters, volume {}^3, {} training / {} validation volumes",
               config.unet_layers(), dataset.n_classes, result.parameter_count, dataset.vol_size,
               dataset.train_ids.size(), dataset.val_ids.size());

  const torch::Tensor class_weights = estimate_class_weights(config, dataset);
  warm_up(model, config, dataset, class_weights);

  auto optimizer = make_optimizer(config.optimizer, model->parameters(), config.starting_learning_rate);
  LrScheduler scheduler(config.starting_learning_rate, config.min_learning_rate, config.T_0, config.T_mult,
                        !config.disable_scheduler);
  const CheckpointIdentity identity = checkpoint_identity(config, model);
  const fs::path stats_path = run_dir / "train_stats.csv";
  CheckpointWriter checkpoints(config, run_dir, identity);

  // Continue from the last checkpoint when resuming.
  TrainingProgress progress;
  if (resume) {
    // Temporary files of writes that a kill interrupted.
    remove_orphaned_temporary_files(run_dir);
    if (fs::is_directory(checkpoint_dir(config, run_dir))) {
      remove_orphaned_temporary_files(checkpoint_dir(config, run_dir));
    }
    std::optional<TrainingProgress> loaded =
        load_latest_checkpoint(checkpoint_dir(config, run_dir), model, *optimizer, identity);
    if (!loaded) {
      throw std::runtime_error(fmt::format("no checkpoint to resume from in {}; start a new run instead",
                                           checkpoint_dir(config, run_dir).string()));
    }
    progress = std::move(*loaded);
    scheduler.set_epochs_completed(progress.scheduler_epochs);
    restore_train_stats(stats_path, progress.history);
    if (progress.val_dice >= config.target_dice) {
      spdlog::info("this run already reached validation Dice {:.4f} >= {} in epoch {}; nothing left to train",
                   progress.val_dice, config.target_dice, progress.epoch);
      fill_result(result, config, progress);
      return result;
    }
  }

  monitor.run_start();
  for (int epoch = progress.epoch + 1; progress.val_dice < config.target_dice; ++epoch) {
    if (config.epochs != -1 && epoch > config.epochs) {
      spdlog::warn("stopping after the epoch cap of {} without reaching validation Dice {} (reached {:.4f})",
                   config.epochs, config.target_dice, progress.val_dice);
      break;
    }
    const Clock::time_point epoch_start = Clock::now();
    const double lr = scheduler.lr();
    set_learning_rate(*optimizer, lr);

    // Train on this epoch's shuffled order.
    model->train();
    EpochStats stats;
    stats.epoch = epoch;
    stats.learning_rate = lr;
    double soft_dice_sum = 0.0;
    int train_samples = 0;
    std::vector<double> step_times;
    PrefetchLoader loader(dataset, Split::kTraining,
                          epoch_order(dataset.train_ids, static_cast<std::uint64_t>(config.seed), epoch),
                          config.local_batch_size, config.dataloader_num_workers > 0 ? kPrefetchBatches : 0);
    monitor.epoch_start(epoch, loader.batch_count());
    while (auto batch = loader.next()) {
      monitor.step_start();
      const Clock::time_point step_start = Clock::now();
      const StepOutput step = train_step(model, *optimizer, *batch, class_weights);
      const double step_s = seconds_since(step_start);
      check_finite(step.loss, "training loss", epoch);

      if (batch->size() == config.local_batch_size) {
        step_times.push_back(step_s);
      }
      progress.step_seconds_total += step_s;
      stats.epoch_loss += step.loss * batch->size();
      soft_dice_sum += step.soft_dice * batch->size();
      train_samples += batch->size();
      ++stats.optimizer_steps;
      fault_point("train_step");
      monitor.step_end();
      if (const int signal_number = stop_signal()) {
        throw StopRequested{signal_number};
      }
    }
    monitor.train_steps_end();
    progress.total_optimizer_steps += stats.optimizer_steps;
    progress.train_samples_total += train_samples;
    stats.overall_loss = stats.epoch_loss / train_samples;
    stats.train_dice = soft_dice_sum / train_samples;

    // Validate, then step the scheduler once per epoch.
    const ValidationOutput validation = run_validation(model, config, dataset, class_weights, -1);
    stats.val_loss_epoch = validation.loss_sum;
    stats.val_loss_avg = validation.loss_sum / validation.samples;
    stats.val_dice = validation.dice_sum / validation.samples;
    check_finite(stats.val_loss_avg, "validation loss", epoch);
    check_finite(stats.val_dice, "validation Dice", epoch);
    monitor.validation_end(stats.val_dice);
    scheduler.step();
    stats.epoch_duration = seconds_since(epoch_start);
    stats.total_optimizer_steps = progress.total_optimizer_steps;

    // Record the epoch (outside the timed interval, as the reference does).
    progress.epoch = epoch;
    progress.val_dice = stats.val_dice;
    progress.scheduler_epochs = scheduler.epochs_completed();
    progress.history.push_back(stats);
    progress.epoch_median_step_s.push_back(median(step_times));
    write_train_stats(stats_path, progress.history);
    write_figures(config, run_dir, progress.history);
    spdlog::info(
        "epoch {}: train_loss={:.4f} train_dice={:.4f} val_loss={:.4f} val_dice={:.4f} lr={:.3g} epoch_s={:.2f} "
        "median_step_s={:.3f} steps={}",
        epoch, stats.overall_loss, stats.train_dice, stats.val_loss_avg, stats.val_dice, lr, stats.epoch_duration,
        progress.epoch_median_step_s.back(), progress.total_optimizer_steps);

    const bool last = progress.val_dice >= config.target_dice || (config.epochs != -1 && epoch >= config.epochs);
    checkpoints.after_epoch(model, *optimizer, progress, last);
    if (const int signal_number = stop_signal()) {
      throw StopRequested{signal_number};
    }
  }

  monitor.run_stop(progress.val_dice >= config.target_dice);
  fill_result(result, config, progress);
  return result;
}

}  // namespace scaffold
