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
#include "train/ddp.hpp"
#include "train/evaluate.hpp"
#include "train/final_images.hpp"
#include "train/loss.hpp"
#include "train/memory_policy.hpp"
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

// Each rank counts every size-th of the sampled masks. The integer counts are
// summed over ranks, so the weights do not depend on the rank count.
torch::Tensor estimate_class_weights(const Config& config, const DatasetInfo& dataset, ProcessGroup& group) {
  const std::vector<int> ids = class_weight_sample_ids(dataset.train_ids, config.ce_weight_sample_fraction);
  std::int64_t counts[2] = {0, 0};  // background, foreground
  for (std::size_t i = static_cast<std::size_t>(group.rank()); i < ids.size(); i += static_cast<std::size_t>(group.size())) {
    const Batch batch = read_batch(dataset, Split::kTraining, {ids[i]});
    const std::int64_t bg = (batch.mask == 0).sum().item<std::int64_t>();
    counts[0] += bg;
    counts[1] += batch.mask.numel() - bg;
  }
  group.all_reduce_sum(counts, 2);
  const std::int64_t background = counts[0];
  const std::int64_t foreground = counts[1];
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

std::size_t bucket_bytes(const Config& config) {
  return static_cast<std::size_t>(config.ddp_bucket_cap_mb * 1024.0 * 1024.0);
}

// Throws StopRequested on every rank when SIGINT or SIGTERM reached any rank,
// so that all ranks stop after the same step.
void stop_if_requested(ProcessGroup& group) {
  std::int64_t signal_number = stop_signal();
  group.all_reduce_max(&signal_number, 1);
  if (signal_number != 0) {
    throw StopRequested{static_cast<int>(signal_number)};
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

// One optimizer step on `batch`: forward, loss, backward (with the gradient
// all-reduce running alongside), clip, update.
StepOutput train_step(UNet& model, torch::optim::Optimizer& optimizer, const Batch& batch,
                      const torch::Tensor& class_weights, GradientAllReducer& reducer) {
  // logits: [B, n_classes, D, H, W]
  TraceRegion region("predict");
  const torch::Tensor logits = model->forward(batch.volume);
  region.next("calculate_loss");
  const LossTerms terms = segmentation_loss(logits, batch.mask, class_weights);

  region.next("backward");
  optimizer.zero_grad();
  terms.loss.backward();
  reducer.finish();
  region.next("step_and_update");
  clip_grad_norm(model->parameters(), kMaxGradNorm);
  optimizer.step();

  return {terms.loss.item<double>(), terms.soft_dice.item<double>()};
}

// Runs up to warmup_batches training and validation batches, plus one step of
// the ragged final batch size, so that allocator pools and kernel choices are
// warm before timing starts. The model is restored afterwards and the optimizer
// rebuilt, so warmup does not change the trajectory.
void warm_up(UNet& model, const Config& config, const DatasetInfo& dataset, const torch::Tensor& class_weights,
             ProcessGroup& group, GradientAllReducer& reducer) {
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
  // Every rank's shard has the same length, so all ranks take the same steps.
  const std::vector<int> order = distributed_train_shard(
      epoch_order(dataset.train_ids, static_cast<std::uint64_t>(config.seed), 0), group.rank(), group.size());
  const int batch_size = config.local_batch_size;
  int steps = 0;
  int samples = 0;
  for (std::size_t begin = 0; begin + static_cast<std::size_t>(batch_size) <= order.size() &&
                              steps < config.warmup_batches;
       begin += static_cast<std::size_t>(batch_size), ++steps) {
    const std::vector<int> ids(order.begin() + static_cast<std::ptrdiff_t>(begin),
                               order.begin() + static_cast<std::ptrdiff_t>(begin) + batch_size);
    train_step(model, *optimizer, read_batch(dataset, Split::kTraining, ids), class_weights, reducer);
    samples += batch_size;
  }
  const std::size_t ragged = order.size() % static_cast<std::size_t>(batch_size);
  if (ragged != 0) {
    const std::vector<int> ids(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(ragged));
    train_step(model, *optimizer, read_batch(dataset, Split::kTraining, ids), class_weights, reducer);
    samples += static_cast<int>(ragged);
  }

  const ValidationOutput validation =
      run_validation(model, config, dataset, class_weights, config.warmup_batches, group);

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
  spdlog::info("warmup: {} training samples per rank and {} validation samples in {:.2f} s (state restored)", samples,
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

TrainingResult train_unet(const Config& config, const DatasetInfo& dataset, const fs::path& run_dir, bool resume,
                          ProcessGroup& group) {
  TrainingResult result;
  TrainingMonitor monitor(config, dataset, run_dir);
  result.world_size = group.size();
  result.compute_threads = configure_compute_threads(group.local_size());
  keep_freed_memory_for_reuse();
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
  const bool root = group.is_root();

  // Model, seeded so that initial weights depend only on the seed; rank 0's
  // weights are broadcast anyway, as torch DDP does.
  torch::manual_seed(static_cast<std::uint64_t>(config.seed));
  const ConvBackend backend = config.conv_backend == "libtorch" ? ConvBackend::libtorch : ConvBackend::onednn;
  UNet model(3, dataset.n_classes, config.unet_layers(), config.group_norm_groups, backend);
  result.parameter_count = count_parameters(model);
  GradientAllReducer reducer(group, model->parameters(), bucket_bytes(config));
  reducer.broadcast_parameters();
  spdlog::info("CPU kernels: {}", config.conv_backend == "libtorch"
                                      ? "LibTorch's own convolutions, GroupNorm and ReLU"
                                      : "oneDNN convolutions called directly, fused GroupNorm + ReLU");
  spdlog::info("U-Net: {} levels, {} classes, {} parameters, volume {}^3, {} training / {} validation volumes",
               config.unet_layers(), dataset.n_classes, result.parameter_count, dataset.vol_size,
               dataset.train_ids.size(), dataset.val_ids.size());
  if (group.size() > 1) {
    spdlog::info("data parallel: {} ranks, local batch {}, global batch {}, {} gradient buckets of at most {} MiB",
                 group.size(), config.local_batch_size, config.local_batch_size * group.size(),
                 reducer.bucket_count(), config.ddp_bucket_cap_mb);
  }

  const torch::Tensor class_weights = estimate_class_weights(config, dataset, group);
  warm_up(model, config, dataset, class_weights, group, reducer);

  auto optimizer = make_optimizer(config.optimizer, model->parameters(), config.starting_learning_rate);
  LrScheduler scheduler(config.starting_learning_rate, config.min_learning_rate, config.T_0, config.T_mult,
                        !config.disable_scheduler);
  const CheckpointIdentity identity = checkpoint_identity(config, model);
  const fs::path stats_path = run_dir / "train_stats.csv";
  CheckpointWriter checkpoints(config, run_dir, identity);

  // Continue from the last checkpoint when resuming: rank 0 reads it and
  // broadcasts its bytes.
  TrainingProgress progress;
  progress.world_size = group.size();
  if (resume) {
    std::string image = collective_try_typed(group, "loading the checkpoint", [&]() -> std::string {
      if (!root) {
        return {};
      }
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
      return group.size() > 1 ? encode_checkpoint(model, *optimizer, progress, identity) : std::string();
    });
    if (group.size() > 1) {
      group.broadcast(image, 0);
      if (!root) {
        progress = load_checkpoint_bytes(image, "broadcast by rank 0", model, *optimizer, identity);
      }
    }
    scheduler.set_epochs_completed(progress.scheduler_epochs);
    if (root) {
      restore_train_stats(stats_path, progress.history);
    }
    if (progress.world_size > 0 && progress.world_size != group.size()) {
      spdlog::warn("the checkpoint was written by a run of {} ranks and this run has {}, so the global batch changes "
                   "from {} to {} samples per step; resume with {} ranks to continue the same training",
                   progress.world_size, group.size(), progress.world_size * config.local_batch_size,
                   group.size() * config.local_batch_size, progress.world_size);
    }
    progress.world_size = group.size();
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
    const double wait_before = reducer.wait_seconds();

    // Train on this rank's share of the epoch's shuffled order.
    model->train();
    EpochStats stats;
    stats.epoch = epoch;
    stats.learning_rate = lr;
    // Sums over this rank's samples: loss x batch size, soft Dice x batch size, samples.
    double sums[3] = {0.0, 0.0, 0.0};
    std::vector<double> step_times;
    double step_seconds = 0.0;
    const std::vector<int> shard = distributed_train_shard(
        epoch_order(dataset.train_ids, static_cast<std::uint64_t>(config.seed), epoch), group.rank(), group.size());
    PrefetchLoader loader(dataset, Split::kTraining, shard, config.local_batch_size,
                          config.dataloader_num_workers > 0 ? kPrefetchBatches : 0);
    monitor.epoch_start(epoch, loader.batch_count());
    while (auto batch = loader.next()) {
      monitor.step_start();
      const Clock::time_point step_start = Clock::now();
      const StepOutput step = train_step(model, *optimizer, *batch, class_weights, reducer);
      const double step_s = seconds_since(step_start);
      check_finite(step.loss, "training loss", epoch);

      if (batch->size() == config.local_batch_size) {
        step_times.push_back(step_s);
      }
      step_seconds += step_s;
      sums[0] += step.loss * batch->size();
      sums[1] += step.soft_dice * batch->size();
      sums[2] += batch->size();
      ++stats.optimizer_steps;
      fault_point("train_step");
      monitor.step_end();
      if (group.size() > 1) {
        stop_if_requested(group);
      } else if (const int signal_number = stop_signal()) {
        throw StopRequested{signal_number};
      }
    }
    monitor.train_steps_end();
    // Every rank took the same steps; a step takes as long as its slowest rank.
    group.all_reduce_sum(sums, 3);
    group.all_reduce_max(step_times.data(), step_times.size());
    const auto train_samples = static_cast<std::int64_t>(sums[2]);
    progress.total_optimizer_steps += stats.optimizer_steps;
    progress.train_samples_total += train_samples;
    progress.step_seconds_total += step_seconds;
    stats.epoch_loss = sums[0];
    stats.overall_loss = sums[0] / sums[2];
    stats.train_dice = sums[1] / sums[2];

    // Validate, then step the scheduler once per epoch.
    const ValidationOutput validation = run_validation(model, config, dataset, class_weights, -1, group);
    stats.val_loss_epoch = validation.loss_sum;
    stats.val_loss_avg = validation.loss_sum / validation.samples;
    stats.val_dice = validation.dice_sum / validation.samples;
    check_finite(stats.val_loss_avg, "validation loss", epoch);
    check_finite(stats.val_dice, "validation Dice", epoch);
    monitor.validation_end(stats.val_dice);
    scheduler.step();
    stats.epoch_duration = seconds_since(epoch_start);
    stats.total_optimizer_steps = progress.total_optimizer_steps;
    // Rank 0's epoch time stands for the job, as in the reference.
    group.broadcast_bytes(&stats.epoch_duration, sizeof(stats.epoch_duration), 0);

    // Record the epoch (outside the timed interval, as the reference does).
    progress.epoch = epoch;
    progress.val_dice = stats.val_dice;
    progress.scheduler_epochs = scheduler.epochs_completed();
    progress.history.push_back(stats);
    progress.epoch_median_step_s.push_back(median(step_times));
    const double comm_wait = reducer.wait_seconds() - wait_before;
    if (root) {
      write_train_stats(stats_path, progress.history);
      write_figures(config, run_dir, progress.history);
    }
    spdlog::info(
        "epoch {}: train_loss={:.4f} train_dice={:.4f} val_loss={:.4f} val_dice={:.4f} lr={:.3g} epoch_s={:.2f} "
        "median_step_s={:.3f} steps={}",
        epoch, stats.overall_loss, stats.train_dice, stats.val_loss_avg, stats.val_dice, lr, stats.epoch_duration,
        progress.epoch_median_step_s.back(), progress.total_optimizer_steps);
    if (group.size() > 1) {
      spdlog::info("epoch {}: waited {:.2f} s for gradient all-reduces ({:.1f}% of this rank's {:.2f} s of steps)",
                   epoch, comm_wait, step_seconds > 0 ? 100.0 * comm_wait / step_seconds : 0.0, step_seconds);
    }

    const bool last = progress.val_dice >= config.target_dice || (config.epochs != -1 && epoch >= config.epochs);
    if (root) {
      checkpoints.after_epoch(model, *optimizer, progress, last);
    }
    if (group.size() > 1) {
      stop_if_requested(group);
    } else if (const int signal_number = stop_signal()) {
      throw StopRequested{signal_number};
    }
  }

  monitor.run_stop(progress.val_dice >= config.target_dice);
  fill_result(result, config, progress);
  result.comm_wait_s = reducer.wait_seconds();
  if (root) {
    // Slice images of validation volumes with the best checkpoint's prediction
    // (these final weights without checkpoints); a failure is only a warning.
    write_final_images(config, dataset, run_dir, &model);
  }
  return result;
}

}  // namespace scaffold
