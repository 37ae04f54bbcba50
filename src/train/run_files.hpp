// Files of a benchmark run directory: the directory itself, train_stats.csv,
// result.json and restart.sh.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace scaffold {

// One row of train_stats.csv (the reference's ten columns, in order).
struct EpochStats {
  int epoch = 0;
  double epoch_loss = 0;       // sum over samples of (batch loss x batch size)
  double overall_loss = 0;     // epoch_loss / training samples
  double val_loss_epoch = 0;   // sum over validation batches of (loss x batch size)
  double val_loss_avg = 0;     // val_loss_epoch / validation samples
  double train_dice = 0;       // sample-weighted mean soft foreground Dice
  double val_dice = 0;         // mean hard foreground Dice per validation sample
  double epoch_duration = 0;   // seconds from epoch start to after validation and scheduler step
  std::int64_t optimizer_steps = 0;
  std::int64_t total_optimizer_steps = 0;

  // Not a train_stats.csv column: the learning rate used during the epoch.
  double learning_rate = 0;
};

inline constexpr const char* kTrainStatsHeader =
    "epoch,epoch_loss,overall_loss,val_loss_epoch,val_loss_avg,train_dice,val_dice,epoch_duration,"
    "optimizer_steps,total_optimizer_steps";

// Creates `<base_run_dir>/<job_name>_YYYYmmdd-HHMMSS`, adding -1, -2, ... when a
// directory of that name exists (mkdir is the atomic claim).
std::filesystem::path create_run_dir(const Config& config);

// Rewrites train_stats.csv with the header and `rows` (atomic replace).
void write_train_stats(const std::filesystem::path& csv_path, const std::vector<EpochStats>& rows);

// Reads train_stats.csv; throws naming the file when a column or value is invalid.
std::vector<EpochStats> read_train_stats(const std::filesystem::path& csv_path);

std::string format_stats_row(const EpochStats& row);

// Writes restart.sh (executable): `<executable> benchmark -c <run_dir>/config.yaml
// --restart --run-dir <run_dir>`, passing on its own arguments. config.yaml
// already contains the merged files and command-line overrides. A non-empty
// `launcher` (e.g. {"mpiexec", "-n", "4"}) is put before the executable, so a
// multi-rank run restarts with the same number of ranks.
void write_restart_script(const std::filesystem::path& run_dir, const std::filesystem::path& executable,
                          const std::vector<std::string>& launcher = {});

}  // namespace scaffold
