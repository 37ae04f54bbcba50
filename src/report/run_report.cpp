#include "report/run_report.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <sstream>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/atomic_file.hpp"
#include "report/run_figures.hpp"

namespace scaffold {

namespace fs = std::filesystem;

namespace {

constexpr const char* kNotAvailable = "n/a";

// The ten train_stats.csv columns, in the order the trainer writes them.
constexpr const char* kStatsColumns[] = {"epoch",          "epoch_loss", "overall_loss",    "val_loss_epoch",
                                         "val_loss_avg",   "train_dice", "val_dice",        "epoch_duration",
                                         "optimizer_steps", "total_optimizer_steps"};
constexpr std::size_t kStatsColumnCount = std::size(kStatsColumns);

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> fields;
  std::string field;
  std::istringstream stream(line);
  while (std::getline(stream, field, ',')) fields.push_back(field);
  if (!line.empty() && line.back() == ',') fields.emplace_back();
  return fields;
}

std::string trim(std::string text) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), not_space));
  text.erase(std::find_if(text.rbegin(), text.rend(), not_space).base(), text.end());
  return text;
}

// Parses a whole field as a double ("nan" and "inf" included, as printf writes them).
std::optional<double> parse_double(const std::string& text) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (error != std::errc() || stop != end) return std::nullopt;
  return value;
}

std::optional<std::int64_t> parse_integer(const std::string& text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (error != std::errc() || stop != end) return std::nullopt;
  return value;
}

// The PNG width and height from the IHDR chunk, which must come first.
std::optional<std::pair<int, int>> png_size(const std::string& bytes) {
  static constexpr unsigned char kSignature[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.size() < 24 || bytes.compare(0, 8, reinterpret_cast<const char*>(kSignature), 8) != 0 ||
      bytes.compare(12, 4, "IHDR") != 0) {
    return std::nullopt;
  }
  const auto big_endian = [&](std::size_t offset) {
    std::uint32_t value = 0;
    for (std::size_t i = 0; i < 4; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
    return value;
  };
  const std::uint32_t width = big_endian(16);
  const std::uint32_t height = big_endian(20);
  if (width == 0 || height == 0 || width > 1u << 20 || height > 1u << 20) return std::nullopt;
  return std::pair{static_cast<int>(width), static_cast<int>(height)};
}

// Sort key "val_12.png" -> ("val_", 12, name), so that val_2 comes before val_10.
std::tuple<std::string, std::int64_t, std::string> natural_key(const std::string& name) {
  const std::size_t digits = name.find_first_of("0123456789");
  if (digits == std::string::npos) return {name, -1, name};
  const std::size_t digits_end = name.find_first_not_of("0123456789", digits);
  const std::optional<std::int64_t> number =
      parse_integer(name.substr(digits, std::min<std::size_t>(digits_end - digits, 18)));
  return {name.substr(0, digits), number.value_or(-1), name};
}

// Regular files in `dir` whose extension is `extension`, sorted by name.
std::vector<fs::path> files_with_extension(const fs::path& dir, const std::string& extension) {
  std::vector<fs::path> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && entry.path().extension() == extension && !name.starts_with(".")) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

void read_result_json(RunReport& report) {
  const fs::path path = report.dir / "result.json";
  if (!fs::exists(path)) {
    report.warnings.push_back("result.json is missing: the run is still training, stopped early or failed");
    return;
  }

  nlohmann::json result;
  try {
    result = nlohmann::json::parse(read_file(path));
  } catch (const std::exception& error) {
    report.warnings.push_back(fmt::format("{} is not valid JSON: {}", path.string(), error.what()));
    return;
  }
  if (!result.is_object()) {
    report.warnings.push_back(fmt::format("{} is not a JSON object", path.string()));
    return;
  }

  for (const SummaryField& field : summary_fields()) {
    if (result.contains(field.key)) {
      report.summary[field.key] = format_summary_value(result[field.key].dump(), field.format);
    }
  }
  if (result.contains("target_dice") && result["target_dice"].is_number()) {
    report.target_dice = result["target_dice"].get<double>();
  }

  // Learning rates come only from result.json's per_epoch list.
  if (!result.contains("per_epoch") || !result["per_epoch"].is_array()) return;
  std::map<int, double> learning_rates;
  for (const nlohmann::json& entry : result["per_epoch"]) {
    if (entry.is_object() && entry.contains("epoch") && entry["epoch"].is_number_integer() &&
        entry.contains("learning_rate") && entry["learning_rate"].is_number()) {
      learning_rates[entry["epoch"].get<int>()] = entry["learning_rate"].get<double>();
    }
  }
  for (ReportEpochRow& row : report.epochs) {
    if (const auto it = learning_rates.find(row.epoch); it != learning_rates.end()) row.learning_rate = it->second;
  }
}

void read_config(RunReport& report) {
  const fs::path path = report.dir / "config.yaml";
  if (!fs::exists(path)) {
    report.warnings.push_back("config.yaml is missing");
    return;
  }
  try {
    report.config_yaml = read_file(path);
  } catch (const IoError& error) {
    report.warnings.push_back(error.what());
    return;
  }
  if (report.target_dice) return;
  try {
    const YAML::Node config = YAML::Load(report.config_yaml);
    if (config.IsMap() && config["target_dice"]) report.target_dice = config["target_dice"].as<double>();
  } catch (const YAML::Exception& error) {
    report.warnings.push_back(fmt::format("{} is not valid YAML: {}", path.string(), error.what()));
  }
}

void read_train_stats_file(RunReport& report) {
  const fs::path path = report.dir / "train_stats.csv";
  if (!fs::exists(path)) {
    report.warnings.push_back("train_stats.csv is missing: no epoch has finished");
    return;
  }
  try {
    report.epochs = parse_train_stats(read_file(path), path.string());
  } catch (const std::exception& error) {
    report.warnings.push_back(error.what());
  }
}

void read_figures(RunReport& report) {
  const fs::path dir = report.dir / "figures";
  if (!fs::is_directory(dir)) {
    report.warnings.push_back("figures/ is missing: no epoch has finished");
    return;
  }

  // The trainer's figures in their fixed order, then any others by name.
  std::vector<fs::path> paths;
  for (const std::string& name : run_figure_names()) {
    if (fs::is_regular_file(dir / name)) {
      paths.push_back(dir / name);
    } else {
      report.warnings.push_back(fmt::format("figure {} is missing", (dir / name).string()));
    }
  }
  const std::vector<std::string> known = run_figure_names();
  for (const fs::path& path : files_with_extension(dir, ".svg")) {
    if (std::find(known.begin(), known.end(), path.filename().string()) == known.end()) paths.push_back(path);
  }

  for (const fs::path& path : paths) {
    try {
      report.figures.push_back({path.filename().string(), read_file(path)});
    } catch (const IoError& error) {
      report.warnings.push_back(error.what());
    }
  }
}

void read_images(RunReport& report) {
  const fs::path dir = report.dir / "images";
  if (!fs::is_directory(dir)) return;

  std::vector<fs::path> paths = files_with_extension(dir, ".png");
  std::sort(paths.begin(), paths.end(), [](const fs::path& a, const fs::path& b) {
    return natural_key(a.filename().string()) < natural_key(b.filename().string());
  });
  for (const fs::path& path : paths) {
    ReportFile image;
    image.name = path.filename().string();
    try {
      image.bytes = read_file(path);
    } catch (const IoError& error) {
      report.warnings.push_back(error.what());
      continue;
    }
    const std::optional<std::pair<int, int>> size = png_size(image.bytes);
    if (!size) {
      report.warnings.push_back(fmt::format("{} is not a PNG image; it is left out", path.string()));
      continue;
    }
    std::tie(image.width_px, image.height_px) = *size;
    report.images.push_back(std::move(image));
  }
}

}  // namespace

const std::vector<SummaryField>& summary_fields() {
  static const std::vector<SummaryField> fields = {
      {"figure_of_merit_s", "Figure of merit (s)", SummaryFormat::kSeconds},
      {"converged", "Reached the Dice target", SummaryFormat::kYesNo},
      {"target_dice", "Target Dice", SummaryFormat::kNumber},
      {"epochs", "Epochs", SummaryFormat::kInteger},
      {"final_val_dice", "Final validation Dice", SummaryFormat::kDice},
      {"train_samples_per_s", "Training samples per second", SummaryFormat::kRate},
      {"median_minibatch_s", "Median step time (s)", SummaryFormat::kStepSeconds},
      {"total_optimizer_steps", "Optimizer steps", SummaryFormat::kInteger},
      {"parameter_count", "Parameters", SummaryFormat::kInteger},
      {"problem_scale", "Problem scale", SummaryFormat::kInteger},
      {"vol_size", "Volume edge (voxels)", SummaryFormat::kInteger},
      {"n_categories", "Fractal classes", SummaryFormat::kInteger},
      {"unet_layers", "U-Net levels", SummaryFormat::kInteger},
      {"local_batch_size", "Batch size per process", SummaryFormat::kInteger},
      {"world_size", "Processes", SummaryFormat::kInteger},
      {"compute_threads", "Compute threads", SummaryFormat::kInteger},
      {"device", "Device", SummaryFormat::kText},
      {"conv_backend", "Convolution backend", SummaryFormat::kText},
      {"host", "Host", SummaryFormat::kText},
      {"scaffold_version", "scaffold version", SummaryFormat::kText},
      {"scaffold_commit", "scaffold commit", SummaryFormat::kText},
      {"libtorch_version", "LibTorch version", SummaryFormat::kText},
      {"config_id", "Dataset config id", SummaryFormat::kText},
  };
  return fields;
}

std::string RunReport::value(const std::string& key) const {
  const auto it = summary.find(key);
  return it == summary.end() ? kNotAvailable : it->second;
}

std::string format_summary_value(const std::string& json_text, SummaryFormat format) {
  const nlohmann::json value = nlohmann::json::parse(json_text);
  if (value.is_null()) return kNotAvailable;
  if (value.is_string()) return value.get<std::string>();

  switch (format) {
    case SummaryFormat::kSeconds:
    case SummaryFormat::kRate:
      if (value.is_number()) return fmt::format("{:.2f}", value.get<double>());
      break;
    case SummaryFormat::kDice:
    case SummaryFormat::kStepSeconds:
      if (value.is_number()) return fmt::format("{:.4f}", value.get<double>());
      break;
    case SummaryFormat::kNumber:
      if (value.is_number()) return fmt::format("{:g}", value.get<double>());
      break;
    case SummaryFormat::kInteger:
      if (value.is_number_integer()) return value.dump();
      if (value.is_number()) return fmt::format("{:g}", value.get<double>());
      break;
    case SummaryFormat::kYesNo:
      if (value.is_boolean()) return value.get<bool>() ? "yes" : "no";
      break;
    case SummaryFormat::kText:
      break;
  }
  return value.dump();
}

std::vector<ReportEpochRow> parse_train_stats(const std::string& text, const std::string& origin) {
  std::istringstream stream(text);
  std::string line;
  if (!std::getline(stream, line)) return {};

  // Map each known column to its position in this file's header.
  const std::vector<std::string> header = split_csv_line(trim(line));
  std::array<std::size_t, kStatsColumnCount> position{};
  for (std::size_t column = 0; column < kStatsColumnCount; ++column) {
    const auto it = std::find(header.begin(), header.end(), kStatsColumns[column]);
    if (it == header.end()) {
      throw ReportError(fmt::format("{}: the header has no column '{}'; expected the columns {}", origin,
                                    kStatsColumns[column], fmt::join(kStatsColumns, ",")));
    }
    position[column] = static_cast<std::size_t>(it - header.begin());
  }

  std::vector<ReportEpochRow> rows;
  for (int line_number = 2; std::getline(stream, line); ++line_number) {
    line = trim(line);
    if (line.empty()) continue;
    const std::vector<std::string> fields = split_csv_line(line);
    if (fields.size() != header.size()) {
      throw ReportError(fmt::format("{} line {}: {} fields, but the header has {}", origin, line_number,
                                    fields.size(), header.size()));
    }

    std::array<double, kStatsColumnCount> values{};
    for (std::size_t column = 0; column < kStatsColumnCount; ++column) {
      const std::string& field = fields[position[column]];
      const std::optional<double> value = parse_double(field);
      if (!value) {
        throw ReportError(fmt::format("{} line {}: column {} has the value '{}', which is not a number", origin,
                                      line_number, kStatsColumns[column], field));
      }
      values[column] = *value;
    }
    // The integer columns must hold whole numbers.
    for (std::size_t column : {std::size_t{0}, std::size_t{8}, std::size_t{9}}) {
      if (!parse_integer(fields[position[column]])) {
        throw ReportError(fmt::format("{} line {}: column {} has the value '{}', which is not an integer", origin,
                                      line_number, kStatsColumns[column], fields[position[column]]));
      }
    }

    ReportEpochRow row;
    row.epoch = static_cast<int>(values[0]);
    row.epoch_loss = values[1];
    row.overall_loss = values[2];
    row.val_loss_epoch = values[3];
    row.val_loss_avg = values[4];
    row.train_dice = values[5];
    row.val_dice = values[6];
    row.epoch_duration = values[7];
    row.optimizer_steps = *parse_integer(fields[position[8]]);
    row.total_optimizer_steps = *parse_integer(fields[position[9]]);
    rows.push_back(row);
  }
  return rows;
}

RunReport read_run_report(const fs::path& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    throw ReportError(fmt::format("run directory {} does not exist or is not a directory", dir.string()));
  }
  if (!fs::exists(dir / "result.json") && !fs::exists(dir / "train_stats.csv") && !fs::exists(dir / "config.yaml")) {
    throw ReportError(fmt::format("{} is not a benchmark run directory: it contains none of result.json, "
                                  "train_stats.csv and config.yaml; pass a directory that scaffold benchmark created",
                                  dir.string()));
  }

  RunReport report;
  report.dir = dir;
  report.name = fs::absolute(dir).lexically_normal().filename().string();
  if (report.name.empty()) report.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();

  // train_stats.csv before result.json, which adds the learning rates to its rows.
  read_train_stats_file(report);
  read_result_json(report);
  read_config(report);
  read_figures(report);
  read_images(report);
  return report;
}

std::string format_summary_table(const std::vector<RunReport>& runs) {
  const std::vector<std::string> header = {"run",       "FOM (s)", "converged", "epochs",   "final Dice",
                                           "samples/s", "median step (s)", "host", "scaffold", "commit",
                                           "LibTorch"};
  const std::vector<std::string> keys = {"figure_of_merit_s",   "converged",          "epochs", "final_val_dice",
                                         "train_samples_per_s", "median_minibatch_s", "host",   "scaffold_version",
                                         "scaffold_commit",     "libtorch_version"};

  std::vector<std::vector<std::string>> rows = {header};
  for (const RunReport& run : runs) {
    std::vector<std::string> row = {run.name};
    for (const std::string& key : keys) row.push_back(run.value(key));
    rows.push_back(row);
  }

  std::vector<std::size_t> widths(header.size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }

  std::string table;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += fmt::format("{:<{}}", row[i], i + 1 < row.size() ? widths[i] + 2 : 0);
    }
    table += trim(line) + "\n";
  }
  return table;
}

}  // namespace scaffold
