// Tests of the MLPerf log lines: the exact text of a line, and the file that
// keeps the lines of earlier sessions of a resumed run.
#include "core/mlperf_log.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "core/logging.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

TEST(MllogLine, MatchesMllogTextExactly) {
  nlohmann::ordered_json metadata;
  metadata["file"] = "train/trainer.cpp";
  metadata["lineno"] = 12;
  metadata["epoch_num"] = 3;
  EXPECT_EQ(format_mllog_line(1700000000123, MlperfEventType::kPointInTime, "eval_accuracy", 0.9552291830380758,
                              metadata),
            ":::MLLOG {\"namespace\": \"\", \"time_ms\": 1700000000123, \"event_type\": \"POINT_IN_TIME\", "
            "\"key\": \"eval_accuracy\", \"value\": 0.9552291830380758, \"metadata\": {\"file\": "
            "\"train/trainer.cpp\", \"lineno\": 12, \"epoch_num\": 3}}");
}

TEST(MllogLine, IntervalsNullsAndEscapes) {
  EXPECT_EQ(format_mllog_line(5, MlperfEventType::kIntervalStart, "run_start", nullptr,
                              nlohmann::ordered_json::object()),
            ":::MLLOG {\"namespace\": \"\", \"time_ms\": 5, \"event_type\": \"INTERVAL_START\", \"key\": "
            "\"run_start\", \"value\": null, \"metadata\": {}}");
  EXPECT_EQ(format_mllog_line(6, MlperfEventType::kIntervalEnd, "run_stop", "a \"quoted\" name",
                              nlohmann::ordered_json{{"status", "success"}}, "rank0"),
            ":::MLLOG {\"namespace\": \"rank0\", \"time_ms\": 6, \"event_type\": \"INTERVAL_END\", \"key\": "
            "\"run_stop\", \"value\": \"a \\\"quoted\\\" name\", \"metadata\": {\"status\": \"success\"}}");
  EXPECT_EQ(format_mllog_line(7, MlperfEventType::kPointInTime, "shape", nlohmann::ordered_json::array({1, 2}),
                              nlohmann::ordered_json::object()),
            ":::MLLOG {\"namespace\": \"\", \"time_ms\": 7, \"event_type\": \"POINT_IN_TIME\", \"key\": \"shape\", "
            "\"value\": [1, 2], \"metadata\": {}}");
}

TEST(MllogLogger, AppendsToEarlierSessionAndNamesCallSite) {
  setup_logging(Verbosity::kQuiet);  // keeps the lines off the test output
  scaffold_test::TempDir dir("mllog_resume");
  const fs::path file = dir.path() / "mllog.txt";
  const std::string earlier =
      ":::MLLOG {\"namespace\": \"\", \"time_ms\": 1, \"event_type\": \"INTERVAL_START\", \"key\": \"init_start\", "
      "\"value\": null, \"metadata\": {}}";
  write_file_atomic(file, std::string_view(earlier));  // no final newline, as after a crash mid-write

  int line = 0;
  {
    MlperfLogger logger(file);
    line = __LINE__ + 1;
    logger.event("seed", 42, {{"note", "x"}});
  }

  const std::vector<std::string> lines = split_lines(read_file(file));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], earlier);
  const std::string prefix = ":::MLLOG ";
  ASSERT_EQ(lines[1].rfind(prefix, 0), 0u) << lines[1];
  const nlohmann::json record = nlohmann::json::parse(lines[1].substr(prefix.size()));
  EXPECT_EQ(record["key"], "seed");
  EXPECT_EQ(record["value"], 42);
  EXPECT_EQ(record["event_type"], "POINT_IN_TIME");
  EXPECT_EQ(record["metadata"]["lineno"], line);
  EXPECT_NE(record["metadata"]["file"].get<std::string>().find("test_mllog.cpp"), std::string::npos) << record;
  EXPECT_EQ(record["metadata"]["note"], "x");
  EXPECT_GT(record["time_ms"].get<std::int64_t>(), 1600000000000);
}

}  // namespace
}  // namespace scaffold
