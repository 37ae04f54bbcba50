// Lines in the MLPerf logging format (the mlperf_logging package's mllog):
//   :::MLLOG {"namespace": "", "time_ms": 1700000000000, "event_type": "POINT_IN_TIME",
//             "key": "seed", "value": 42, "metadata": {"file": "train/x.cpp", "lineno": 12}}
// written to stderr and kept in a file, so MLPerf's log tools can read a run.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <source_location>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace spdlog {
class logger;
}

namespace scaffold {

enum class MlperfEventType { kIntervalStart, kIntervalEnd, kPointInTime };

const char* mlperf_event_type_name(MlperfEventType type);

// One line. The JSON object has the keys in mllog's order (namespace, time_ms,
// event_type, key, value, metadata) and Python json.dumps spacing.
std::string format_mllog_line(std::int64_t time_ms, MlperfEventType type, std::string_view key,
                              const nlohmann::ordered_json& value, const nlohmann::ordered_json& metadata,
                              std::string_view name_space = "");

// Milliseconds since the Unix epoch.
std::int64_t mlperf_time_ms();

class MlperfLogger {
 public:
  // Lines go to stderr through make_plain_stderr_logger (core/logging.hpp), so
  // they follow -q like info lines, and to `file` on flush(). Lines already in
  // `file`, from the earlier sessions of a resumed run, are kept before the new ones.
  explicit MlperfLogger(std::filesystem::path file);
  ~MlperfLogger();
  MlperfLogger(const MlperfLogger&) = delete;
  MlperfLogger& operator=(const MlperfLogger&) = delete;

  // An INTERVAL_START, INTERVAL_END or POINT_IN_TIME line. The metadata gets
  // "file" (relative to src/) and "lineno" of the call, then the fields of `metadata`.
  void start(std::string_view key, const nlohmann::ordered_json& value = nullptr,
             const nlohmann::ordered_json& metadata = nlohmann::ordered_json::object(),
             std::source_location location = std::source_location::current());
  void end(std::string_view key, const nlohmann::ordered_json& value = nullptr,
           const nlohmann::ordered_json& metadata = nlohmann::ordered_json::object(),
           std::source_location location = std::source_location::current());
  void event(std::string_view key, const nlohmann::ordered_json& value = nullptr,
             const nlohmann::ordered_json& metadata = nlohmann::ordered_json::object(),
             std::source_location location = std::source_location::current());

  // Rewrites the file with every line so far (write_file_atomic).
  void flush();

  const std::filesystem::path& file() const { return file_; }

 private:
  void log(MlperfEventType type, std::string_view key, const nlohmann::ordered_json& value,
           const nlohmann::ordered_json& metadata, const std::source_location& location);

  std::filesystem::path file_;
  std::string text_;  // the whole file
  std::shared_ptr<spdlog::logger> stream_;
};

}  // namespace scaffold
