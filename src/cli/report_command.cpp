#include "cli/report_command.hpp"

#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "core/logging.hpp"
#include "report/report_page.hpp"
#include "report/run_report.hpp"

namespace scaffold {

namespace fs = std::filesystem;

CLI::App* add_report_command(CLI::App& app, ReportOptions& options) {
  CLI::App* report = app.add_subcommand(
      "report", "Print a summary table of benchmark runs and write one self-contained HTML page with their "
                "figures, slice images, per-epoch statistics and configs (with several runs, a comparison)");
  report->add_option("run_dirs", options.run_dirs, "Run directories of scaffold benchmark")->required();
  report->add_option("-o,--output", options.output,
                     "HTML file to write (default: report.html inside the run directory for one run, or in the "
                     "current directory for several runs)");
  return report;
}

int run_report_command(const ReportOptions& options) {
  std::vector<RunReport> runs;
  for (const std::string& dir : options.run_dirs) {
    RunReport run = read_run_report(dir);
    for (const std::string& warning : run.warnings) spdlog::warn("{}: {}", run.dir.string(), warning);
    runs.push_back(std::move(run));
  }

  const fs::path output = !options.output.empty() ? fs::path(options.output)
                          : runs.size() == 1      ? runs.front().dir / "report.html"
                                                  : fs::path("report.html");
  const fs::path folder = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  if (!fs::is_directory(folder)) {
    throw ReportError(fmt::format("cannot write the report to {}: the folder {} does not exist; create it or choose "
                                  "another -o",
                                  output.string(), folder.string()));
  }
  write_report_html(output, runs);

  // The table goes to stdout, so that it can be piped; logs go to stderr.
  fmt::print("{}", format_summary_table(runs));
  std::fflush(stdout);
  spdlog::info("report of {} run{} written to {}", runs.size(), runs.size() == 1 ? "" : "s", output.string());
  return 0;
}

}  // namespace scaffold
