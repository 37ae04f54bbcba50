// Tests for setup_logging: the line format on stderr and the level per verbosity.
#include "core/logging.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

namespace scaffold {
namespace {

namespace fs = std::filesystem;

// Runs `log` with stderr (file descriptor 2) redirected to a file; returns what was written.
template <typename Function>
std::string capture_stderr(Function log) {
  std::string pattern = (fs::temp_directory_path() / "scaffold-log-XXXXXX").string();
  const int file = ::mkstemp(pattern.data());
  EXPECT_GE(file, 0) << "mkstemp failed for " << pattern;
  std::fflush(stderr);
  const int saved = ::dup(2);
  ::dup2(file, 2);

  log();
  spdlog::default_logger()->flush();
  std::fflush(stderr);

  ::dup2(saved, 2);
  ::close(saved);
  ::close(file);
  std::ifstream input(pattern);
  std::stringstream contents;
  contents << input.rdbuf();
  fs::remove(pattern);
  return contents.str();
}

TEST(Logging, LineFormatWithRank) {
  const std::string output = capture_stderr([] {
    setup_logging(Verbosity::kNormal, 3);
    spdlog::info("epoch {}: train_loss={:.3f}", 12, 0.184);
  });

  // spdlog's stderr colour sink adds ANSI colour codes only on a terminal, and this is a file.
  const std::regex line(R"(\[\d\d:\d\d:\d\d\]\[rank=3\]\[info\] epoch 12: train_loss=0\.184\n)");
  EXPECT_TRUE(std::regex_match(output, line)) << output;
}

TEST(Logging, NormalHidesDebug) {
  const std::string output = capture_stderr([] {
    setup_logging(Verbosity::kNormal);
    spdlog::debug("hidden");
    spdlog::info("shown");
  });
  EXPECT_EQ(output.find("hidden"), std::string::npos) << output;
  EXPECT_NE(output.find("[rank=0][info] shown"), std::string::npos) << output;
}

TEST(Logging, DebugShowsDebug) {
  const std::string output = capture_stderr([] {
    setup_logging(Verbosity::kDebug, 1);
    spdlog::debug("details");
  });
  EXPECT_NE(output.find("[rank=1][debug] details"), std::string::npos) << output;
}

TEST(Logging, QuietShowsOnlyWarnings) {
  const std::string output = capture_stderr([] {
    setup_logging(Verbosity::kQuiet);
    spdlog::info("progress");
    spdlog::warn("disk almost full");
    spdlog::error("write failed");
  });
  EXPECT_EQ(output.find("progress"), std::string::npos) << output;
  EXPECT_NE(output.find("[warning] disk almost full"), std::string::npos) << output;
  EXPECT_NE(output.find("[error] write failed"), std::string::npos) << output;
}

}  // namespace
}  // namespace scaffold
