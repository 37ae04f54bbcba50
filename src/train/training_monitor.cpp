#include "train/training_monitor.hpp"

#include <unistd.h>

#include <chrono>
#include <exception>
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace scaffold {

namespace {

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

nlohmann::ordered_json epoch_metadata(int epoch) { return {{"epoch_num", epoch}}; }

}  // namespace

TrainingMonitor::TrainingMonitor(const Config& config, const DatasetInfo& dataset, const std::filesystem::path& run_dir)
    : config_(config), run_dir_(run_dir), launch_(discover_launch()), profile_settings_(profile_settings_from_env()) {
  if (!config_.mlperf_log || launch_.rank.value_or(0) != 0) return;

  // Every rank is a data-parallel replica: spatial sharding is rejected by the config.
  const int replicas = launch_.size.value_or(1);
  mllog_ = std::make_unique<MlperfLogger>(run_dir_ / "mllog.txt");
  spdlog::info("mlperf_log: MLPerf log lines also go to {}", mllog_->file().string());
  mllog_->start("init_start");
  mllog_->event("submission_benchmark", "scaffold");
  mllog_->event("global_batch_size", config_.local_batch_size * replicas);
  mllog_->event("opt_name", config_.optimizer);
  mllog_->event("opt_base_learning_rate", config_.starting_learning_rate);
  mllog_->event("seed", config_.seed);
  mllog_->event("train_samples", dataset.train_ids.size());
  mllog_->event("eval_samples", dataset.val_ids.size());
}

TrainingMonitor::~TrainingMonitor() {
  step_region_.reset();
  batch_loop_region_.reset();
  epoch_progress_.reset();
  profiler_.reset();
  train_region_.reset();
  if (mllog_ && running_) {
    try {
      mllog_->end("run_stop", nullptr, {{"status", "aborted"}});
    } catch (const std::exception& error) {
      spdlog::error("mlperf_log: {}", error.what());
    }
  }
}

void TrainingMonitor::run_start() {
  running_ = true;
  if (mllog_) {
    mllog_->end("init_stop");
    mllog_->start("run_start");
    mllog_->flush();
  }

  // One trace per node, from its local rank 0, as the reference does.
  if (profile_settings_.enabled && launch_.local_rank.value_or(0) == 0) {
    const int world_size = launch_.size.value_or(1);
    const int nodes = std::max(1, world_size / launch_.local_size.value_or(world_size));
    const auto unix_time_s =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string name =
        profile_file_name(host_name(), launch_.rank.value_or(0), nodes, world_size, config_, unix_time_s);
    profiler_ = std::make_unique<StepProfiler>(profile_settings_, run_dir_ / name);
  }
  train_region_.emplace("train");
}

void TrainingMonitor::epoch_start(int epoch, int steps) {
  epoch_ = epoch;
  if (mllog_) mllog_->start("epoch_start", nullptr, epoch_metadata(epoch));
  batch_loop_region_.emplace("batch_loop");
  ProgressOptions options;
  options.keep_bar = false;  // the epoch's log line follows
  // Not "epoch N:", which starts the line logged when the epoch is complete.
  epoch_progress_ = std::make_unique<Progress>(fmt::format("epoch {} training", epoch), steps, "steps", options);
}

void TrainingMonitor::step_start() { step_region_.emplace("run_training_batch"); }

void TrainingMonitor::step_end() {
  step_region_.reset();
  if (epoch_progress_) epoch_progress_->advance();
  if (profiler_) profiler_->step();
}

void TrainingMonitor::train_steps_end() {
  batch_loop_region_.reset();
  epoch_progress_.reset();
  if (mllog_) {
    mllog_->end("epoch_stop", nullptr, epoch_metadata(epoch_));
    mllog_->start("eval_start", nullptr, epoch_metadata(epoch_));
  }
}

void TrainingMonitor::validation_end(double val_dice) {
  if (!mllog_) return;
  mllog_->event("eval_accuracy", val_dice, epoch_metadata(epoch_));
  mllog_->end("eval_stop", nullptr, epoch_metadata(epoch_));
  mllog_->flush();
}

void TrainingMonitor::run_stop(bool converged) {
  running_ = false;
  if (!mllog_) return;
  mllog_->end("run_stop", nullptr, {{"status", converged ? "success" : "aborted"}});
  mllog_->flush();
}

}  // namespace scaffold
