// `scaffold report`: prints a summary table of one or more benchmark runs and
// writes one self-contained HTML page with their figures, images and tables.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace scaffold {

struct ReportOptions {
  std::vector<std::string> run_dirs;
  std::string output;  // -o; empty: <run>/report.html for one run, ./report.html for several
};

// Adds the `report` subcommand with its options bound to `options`.
CLI::App* add_report_command(CLI::App& app, ReportOptions& options);

// Runs `report`. Throws ReportError for a path that is not a run directory and
// IoError when the page cannot be written. Returns the exit code.
int run_report_command(const ReportOptions& options);

}  // namespace scaffold
