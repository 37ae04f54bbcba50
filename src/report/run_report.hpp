// The files of a finished or running benchmark run, read for `scaffold report`:
// result.json, train_stats.csv, config.yaml, figures/*.svg and images/*.png.
// Reading needs no LibTorch. A missing or invalid file becomes a warning on
// the report, so a report of a damaged or unfinished run still shows the rest.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace scaffold {

// A directory that cannot be reported. The message names it and the reason.
class ReportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One row of train_stats.csv, plus the learning rate from result.json.
struct ReportEpochRow {
  int epoch = 0;
  double epoch_loss = 0;
  double overall_loss = 0;
  double val_loss_epoch = 0;
  double val_loss_avg = 0;
  double train_dice = 0;
  double val_dice = 0;
  double epoch_duration = 0;
  std::int64_t optimizer_steps = 0;
  std::int64_t total_optimizer_steps = 0;
  std::optional<double> learning_rate;  // result.json's per_epoch entry; absent while the run trains
};

// A file embedded in the page: its name and its bytes.
struct ReportFile {
  std::string name;
  std::string bytes;
  int width_px = 0;   // PNG images only, from the IHDR chunk
  int height_px = 0;
};

// Display format of a result.json value.
enum class SummaryFormat { kSeconds, kDice, kRate, kStepSeconds, kNumber, kInteger, kYesNo, kText };

// A result.json key shown in the summary tables.
struct SummaryField {
  const char* key;
  const char* label;
  SummaryFormat format;
};

// The summary rows of the report page, in display order.
const std::vector<SummaryField>& summary_fields();

struct RunReport {
  std::filesystem::path dir;
  std::string name;  // the run directory's own name

  // Formatted values of the summary_fields() keys that result.json contains.
  std::map<std::string, std::string> summary;
  std::optional<double> target_dice;  // from result.json, else from config.yaml

  std::string config_yaml;  // empty when config.yaml is missing
  std::vector<ReportEpochRow> epochs;
  std::vector<ReportFile> figures;  // figures/*.svg: the run_figure_names() files first, then the rest by name
  std::vector<ReportFile> images;   // images/*.png, ordered by the number in their name
  std::vector<std::string> warnings;

  // The summary value of `key`, or "n/a" when result.json lacks it.
  std::string value(const std::string& key) const;
};

// Formats one result.json value as `format` selects: seconds with 2 decimals,
// Dice with 4, rates with 2, step seconds with 4, other numbers in %g form,
// integers in full, booleans as yes/no, JSON null as "n/a". A value of another type than expected is shown as it is.
// `json_text` is the value's JSON text (for example `12.5`, `true`, `"host"`).
std::string format_summary_value(const std::string& json_text, SummaryFormat format);

// Parses train_stats.csv text. Columns are matched by header name, so their
// order does not matter, but every column of the header must be present.
// Throws ReportError naming `origin`, the line and the column for an invalid
// header or value.
std::vector<ReportEpochRow> parse_train_stats(const std::string& text, const std::string& origin);

// Reads the run directory. Throws ReportError when `dir` is not a directory or
// contains none of result.json, train_stats.csv and config.yaml. Problems with
// single files become `warnings`.
RunReport read_run_report(const std::filesystem::path& dir);

// The summary as a plain-text table for a terminal: one row per run, columns
// run, figure of merit, converged, epochs, final Dice, samples per second,
// median step time, host, scaffold version and commit, LibTorch version.
std::string format_summary_table(const std::vector<RunReport>& runs);

}  // namespace scaffold
