#include "train/run_files.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/atomic_file.hpp"

namespace scaffold {

namespace fs = std::filesystem;

fs::path create_run_dir(const Config& config) {
  const fs::path base = fs::absolute(config.base_run_dir);
  std::error_code error;
  fs::create_directories(base, error);
  if (error) {
    throw IoError("mkdir", base, error.value());
  }

  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &local);
  const std::string stem = config.job_name + "_" + stamp;

  for (int suffix = 0; suffix < 10000; ++suffix) {
    const fs::path candidate = base / (suffix == 0 ? stem : fmt::format("{}-{}", stem, suffix));
    if (::mkdir(candidate.c_str(), 0755) == 0) {
      return candidate;
    }
    if (errno != EEXIST) {
      throw IoError("mkdir", candidate, errno);
    }
  }
  throw std::runtime_error(fmt::format("could not create a run directory under {}: 10000 names taken", base.string()));
}

std::string format_stats_row(const EpochStats& row) {
  return fmt::format("{},{},{},{},{},{},{},{},{},{}", row.epoch, row.epoch_loss, row.overall_loss, row.val_loss_epoch,
                     row.val_loss_avg, row.train_dice, row.val_dice, row.epoch_duration, row.optimizer_steps,
                     row.total_optimizer_steps);
}

void write_train_stats(const fs::path& csv_path, const std::vector<EpochStats>& rows) {
  std::string text = std::string(kTrainStatsHeader) + "\n";
  for (const EpochStats& row : rows) {
    text += format_stats_row(row) + "\n";
  }
  write_file_atomic(csv_path, text);
}

std::vector<EpochStats> read_train_stats(const fs::path& csv_path) {
  std::istringstream input(read_file(csv_path));
  std::string line;
  std::vector<EpochStats> rows;
  int line_number = 0;
  while (std::getline(input, line)) {
    ++line_number;
    if (line.empty()) {
      continue;
    }
    if (line_number == 1) {
      if (line != kTrainStatsHeader) {
        throw std::runtime_error(fmt::format("{}: line 1 is not the expected header '{}'; remove the file to start it anew",
                                             csv_path.string(), kTrainStatsHeader));
      }
      continue;
    }
    std::vector<std::string> fields;
    std::stringstream cells(line);
    std::string cell;
    while (std::getline(cells, cell, ',')) {
      fields.push_back(cell);
    }
    if (fields.size() != 10) {
      throw std::runtime_error(fmt::format("{}: line {} has {} columns, expected 10 ({})", csv_path.string(), line_number,
                                           fields.size(), kTrainStatsHeader));
    }
    try {
      EpochStats row;
      row.epoch = std::stoi(fields[0]);
      row.epoch_loss = std::stod(fields[1]);
      row.overall_loss = std::stod(fields[2]);
      row.val_loss_epoch = std::stod(fields[3]);
      row.val_loss_avg = std::stod(fields[4]);
      row.train_dice = std::stod(fields[5]);
      row.val_dice = std::stod(fields[6]);
      row.epoch_duration = std::stod(fields[7]);
      row.optimizer_steps = std::stoll(fields[8]);
      row.total_optimizer_steps = std::stoll(fields[9]);
      rows.push_back(row);
    } catch (const std::exception&) {
      throw std::runtime_error(
          fmt::format("{}: line {} contains a value that is not a number: '{}'", csv_path.string(), line_number, line));
    }
  }
  return rows;
}

namespace {

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

}  // namespace

void write_restart_script(const fs::path& run_dir, const fs::path& executable,
                          const std::vector<std::string>& launcher) {
  std::string launch_words;
  for (const std::string& word : launcher) {
    launch_words += (launch_words.empty() ? "" : " ") + shell_quote(word);
  }
  // A multi-rank run restarts through the same launcher and rank count;
  // SCAFFOLD_LAUNCHER replaces that command, e.g. to add launcher options.
  const std::string launch_lines =
      launcher.empty() ? std::string("launcher=()\n")
                       : fmt::format("launcher=({})\n"
                                     "if [[ -n \"${{SCAFFOLD_LAUNCHER:-}}\" ]]; then read -ra launcher <<<\"$SCAFFOLD_LAUNCHER\"; fi\n",
                                     launch_words);
  const std::string script = fmt::format(
      "#!/usr/bin/env bash\n"
      "# Resumes this run from its last checkpoint; extra arguments are passed on.\n"
      "set -euo pipefail\n"
      "RUN_DIR={}\n"
      "{}"
      "exec \"${{launcher[@]}}\" {} benchmark -c \"$RUN_DIR/config.yaml\" --restart --run-dir \"$RUN_DIR\" \"$@\"\n",
      shell_quote(fs::absolute(run_dir).string()), launch_lines, shell_quote(fs::absolute(executable).string()));
  const fs::path path = run_dir / "restart.sh";
  write_file_atomic(path, script);
  fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec, fs::perm_options::add);
}

}  // namespace scaffold
