#include "core/mlperf_log.hpp"

#include <chrono>
#include <utility>

#include <spdlog/spdlog.h>

#include "core/atomic_file.hpp"
#include "core/logging.hpp"

namespace scaffold {

namespace {

// json.dumps spacing (", " and ": "), which nlohmann's dump() leaves out.
std::string python_json(const nlohmann::ordered_json& value) {
  if (value.is_object()) {
    std::string text = "{";
    bool first = true;
    for (const auto& [key, item] : value.items()) {
      if (!first) text += ", ";
      first = false;
      text += nlohmann::ordered_json(key).dump() + ": " + python_json(item);
    }
    return text + "}";
  }
  if (value.is_array()) {
    std::string text = "[";
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (i > 0) text += ", ";
      text += python_json(value[i]);
    }
    return text + "]";
  }
  return value.dump();
}

// The source path from "src/" on, as mllog trims its root directory.
std::string source_file(const char* path) {
  const std::string_view text(path);
  const std::size_t src = text.rfind("/src/");
  return std::string(src == std::string_view::npos ? text : text.substr(src + 5));
}

}  // namespace

const char* mlperf_event_type_name(MlperfEventType type) {
  switch (type) {
    case MlperfEventType::kIntervalStart:
      return "INTERVAL_START";
    case MlperfEventType::kIntervalEnd:
      return "INTERVAL_END";
    case MlperfEventType::kPointInTime:
      return "POINT_IN_TIME";
  }
  return "POINT_IN_TIME";
}

std::string format_mllog_line(std::int64_t time_ms, MlperfEventType type, std::string_view key,
                              const nlohmann::ordered_json& value, const nlohmann::ordered_json& metadata,
                              std::string_view name_space) {
  nlohmann::ordered_json record;
  record["namespace"] = std::string(name_space);
  record["time_ms"] = time_ms;
  record["event_type"] = mlperf_event_type_name(type);
  record["key"] = std::string(key);
  record["value"] = value;
  record["metadata"] = metadata;
  return ":::MLLOG " + python_json(record);
}

std::int64_t mlperf_time_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

MlperfLogger::MlperfLogger(std::filesystem::path file)
    : file_(std::move(file)), stream_(make_plain_stderr_logger("mllog")) {
  std::error_code error;
  if (std::filesystem::exists(file_, error)) {
    text_ = read_file(file_);
    if (!text_.empty() && text_.back() != '\n') text_ += '\n';
  }
}

MlperfLogger::~MlperfLogger() {
  try {
    flush();
  } catch (const std::exception& error) {
    spdlog::error("cannot write {}: {}", file_.string(), error.what());
  }
}

void MlperfLogger::start(std::string_view key, const nlohmann::ordered_json& value,
                         const nlohmann::ordered_json& metadata, std::source_location location) {
  log(MlperfEventType::kIntervalStart, key, value, metadata, location);
}

void MlperfLogger::end(std::string_view key, const nlohmann::ordered_json& value,
                       const nlohmann::ordered_json& metadata, std::source_location location) {
  log(MlperfEventType::kIntervalEnd, key, value, metadata, location);
}

void MlperfLogger::event(std::string_view key, const nlohmann::ordered_json& value,
                         const nlohmann::ordered_json& metadata, std::source_location location) {
  log(MlperfEventType::kPointInTime, key, value, metadata, location);
}

void MlperfLogger::flush() { write_file_atomic(file_, std::string_view(text_)); }

void MlperfLogger::log(MlperfEventType type, std::string_view key, const nlohmann::ordered_json& value,
                       const nlohmann::ordered_json& metadata, const std::source_location& location) {
  nlohmann::ordered_json full_metadata;
  full_metadata["file"] = source_file(location.file_name());
  full_metadata["lineno"] = location.line();
  for (const auto& [name, item] : metadata.items()) full_metadata[name] = item;

  const std::string line = format_mllog_line(mlperf_time_ms(), type, key, value, full_metadata);
  stream_->info("{}", line);
  text_ += line + "\n";
}

}  // namespace scaffold
