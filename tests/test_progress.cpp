// Tests of the progress display. The rate and time-left arithmetic is checked
// on hand-worked cases with an injected clock, then the throttled log lines,
// the bar and how log lines pass it. The real scaffold command runs with
// stderr on a pipe (plain lines) and on a pseudo-terminal (a bar).
#include "core/progress.hpp"

#include <gtest/gtest.h>
#include <pty.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "core/logging.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

using scaffold_test::run_in;
using scaffold_test::scaffold_command;
using scaffold_test::TempDir;

// A clock the test sets by hand.
struct ManualClock {
  double now_s = 0;
  ProgressClock function() {
    return [this] { return now_s; };
  }
};

// Line-mode options that collect the lines instead of logging them.
ProgressOptions collecting_lines(ManualClock& clock, std::vector<std::string>& lines, double interval_s) {
  ProgressOptions options;
  options.style = ProgressStyle::kLines;
  options.line_interval_s = interval_s;
  options.clock = clock.function();
  options.write_line = [&lines](const std::string& line) { lines.push_back(line); };
  return options;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

std::string read_whole(std::FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::string text;
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof(buffer), file)) > 0;) text.append(buffer, n);
  return text;
}

class ProgressTest : public ::testing::Test {
 protected:
  void SetUp() override { set_progress_enabled(true); }
  void TearDown() override { set_progress_enabled(true); }
};

TEST(ProgressEstimate, HandWorkedRateAndTimeLeft) {
  // 10 of 50 items in 4 s: 2.5 items/s, and 40 items left take 16 s.
  const ProgressEstimate estimate = estimate_progress(10, 50, 4.0);
  EXPECT_DOUBLE_EQ(estimate.rate_per_s, 2.5);
  ASSERT_TRUE(estimate.remaining_s.has_value());
  EXPECT_DOUBLE_EQ(*estimate.remaining_s, 16.0);
}

TEST(ProgressEstimate, FinishedHasNothingLeft) {
  const ProgressEstimate estimate = estimate_progress(8, 8, 2.0);
  EXPECT_DOUBLE_EQ(estimate.rate_per_s, 4.0);
  ASSERT_TRUE(estimate.remaining_s.has_value());
  EXPECT_DOUBLE_EQ(*estimate.remaining_s, 0.0);
}

TEST(ProgressEstimate, UnknownWithoutProgressOrTotal) {
  EXPECT_FALSE(estimate_progress(0, 50, 4.0).remaining_s.has_value());
  EXPECT_DOUBLE_EQ(estimate_progress(0, 50, 4.0).rate_per_s, 0.0);
  EXPECT_FALSE(estimate_progress(5, 50, 0.0).remaining_s.has_value());
  EXPECT_FALSE(estimate_progress(5, 0, 2.0).remaining_s.has_value());
  EXPECT_DOUBLE_EQ(estimate_progress(5, 0, 2.0).rate_per_s, 2.5);
}

TEST(ProgressDuration, Formats) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(59.9), "0:59");
  EXPECT_EQ(format_duration(61), "1:01");
  EXPECT_EQ(format_duration(3599), "59:59");
  EXPECT_EQ(format_duration(3600), "1:00:00");
  EXPECT_EQ(format_duration(3725), "1:02:05");
  EXPECT_EQ(format_duration(-1), "?");
}

TEST_F(ProgressTest, LinesAtMostOncePerInterval) {
  ManualClock clock;
  std::vector<std::string> lines;
  Progress progress("count", 10, "items", collecting_lines(clock, lines, 5.0));

  // Before the first interval ends nothing is written.
  for (const double t : {1.0, 2.0, 3.0}) {
    clock.now_s = t;
    progress.advance();
  }
  EXPECT_TRUE(lines.empty());

  // t = 5: 4 items at 0.8 items/s, 6 left take 7.5 s.
  clock.now_s = 5;
  progress.advance();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "count: 4/10 (40%), 0.80 items/s, 0:05 elapsed, 0:07 left");

  // t = 6 is within the interval after the line at t = 5; t = 10 is not.
  clock.now_s = 6;
  progress.advance();
  EXPECT_EQ(lines.size(), 1u);
  clock.now_s = 10;
  progress.advance();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1], "count: 6/10 (60%), 0.60 items/s, 0:10 elapsed, 0:06 left");

  // The final line: 7 items in 12 s = 0.5833/s, 3 left take 5.14 s.
  clock.now_s = 11;
  progress.advance();
  clock.now_s = 12;
  progress.finish();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2], "count: 7/10 (70%), 0.58 items/s, 0:12 elapsed, 0:05 left");

  // finish() writes once; later calls change nothing.
  progress.advance();
  progress.finish();
  EXPECT_EQ(lines.size(), 3u);
  EXPECT_EQ(progress.done(), 8);
}

TEST_F(ProgressTest, ShortLoopStaysSilent) {
  ManualClock clock;
  std::vector<std::string> lines;
  {
    Progress progress("count", 3, "items", collecting_lines(clock, lines, 10.0));
    for (int i = 0; i < 3; ++i) {
      clock.now_s += 1;
      progress.advance();
    }
  }
  EXPECT_TRUE(lines.empty());
}

TEST_F(ProgressTest, FinalLineOnlyWhenCountChanged) {
  ManualClock clock;
  std::vector<std::string> lines;
  Progress progress("count", 2, "items", collecting_lines(clock, lines, 0.0));
  clock.now_s = 1;
  progress.advance();
  clock.now_s = 2;
  progress.advance();
  progress.finish();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1], "count: 2/2 (100%), 1.00 items/s, 0:02 elapsed");
}

TEST_F(ProgressTest, DetailFollowsNumbers) {
  ManualClock clock;
  std::vector<std::string> lines;
  Progress progress("class search", 4, "classes", collecting_lines(clock, lines, 0.0));
  progress.set_detail("1200 attempts");
  clock.now_s = 2;
  progress.advance();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "class search: 1/4 (25%), 0.50 classes/s, 0:02 elapsed, 0:06 left, 1200 attempts");
}

TEST_F(ProgressTest, DisabledHidesButCounts) {
  set_progress_enabled(false);
  ManualClock clock;
  std::vector<std::string> lines;
  Progress progress("count", 5, "items", collecting_lines(clock, lines, 0.0));
  EXPECT_EQ(progress.style(), ProgressStyle::kHidden);
  clock.now_s = 1;
  progress.advance(5);
  progress.finish();
  EXPECT_TRUE(lines.empty());
  EXPECT_EQ(progress.done(), 5);
}

TEST_F(ProgressTest, ThreadsCountEveryItem) {
  std::vector<std::string> lines;
  ProgressOptions options;
  options.style = ProgressStyle::kLines;
  options.line_interval_s = 0;
  options.write_line = [&lines](const std::string& line) { lines.push_back(line); };
  constexpr int kThreads = 4;
  constexpr int kItemsPerThread = 5000;
  Progress progress("count", kThreads * kItemsPerThread, "items", options);

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&progress] {
      for (int i = 0; i < kItemsPerThread; ++i) progress.advance();
    });
  }
  for (std::thread& thread : threads) thread.join();
  progress.finish();

  EXPECT_EQ(progress.done(), kThreads * kItemsPerThread);
  // Lines are written under the display lock, so their counts never go back.
  const std::regex pattern(R"(count: (\d+)/20000 \(\d+%\), .*)");
  long previous = 0;
  ASSERT_FALSE(lines.empty());
  for (const std::string& line : lines) {
    std::smatch match;
    ASSERT_TRUE(std::regex_match(line, match, pattern)) << line;
    const long count = std::stol(match[1]);
    EXPECT_GE(count, previous) << line;
    previous = count;
  }
  EXPECT_EQ(previous, kThreads * kItemsPerThread);
}

TEST_F(ProgressTest, BarRedrawsInPlace) {
  ManualClock clock;
  std::FILE* stream = std::tmpfile();
  ASSERT_NE(stream, nullptr);
  ProgressOptions options;
  options.style = ProgressStyle::kBar;
  options.bar_interval_s = 1;
  options.clock = clock.function();
  options.bar_stream = stream;
  {
    Progress progress("volumes", 4, "volumes", options);
    clock.now_s = 1;
    progress.advance();
    clock.now_s = 2;
    progress.advance();
  }
  const std::string text = read_whole(stream);
  std::fclose(stream);

  // Two redraws and the final bar, which stays on its own line. A file has
  // no terminal width, so the bar gets 80 columns and its 40-character maximum.
  const std::string quarter = std::string("[##########") + std::string(30, '.') + "]";
  const std::string half = std::string("[####################") + std::string(20, '.') + "]";
  EXPECT_EQ(text.find('\n'), text.size() - 1) << text;
  EXPECT_NE(text.find("\rvolumes " + quarter + " 1/4 1.00 volumes/s 0:01<0:03\x1b[K"), std::string::npos) << text;
  EXPECT_NE(text.find("\rvolumes " + half + " 2/4 1.00 volumes/s 0:02<0:02\x1b[K\n"), std::string::npos) << text;
}

TEST_F(ProgressTest, BarErasedWhenNotKept) {
  ManualClock clock;
  std::FILE* stream = std::tmpfile();
  ASSERT_NE(stream, nullptr);
  ProgressOptions options;
  options.style = ProgressStyle::kBar;
  options.bar_interval_s = 1;
  options.keep_bar = false;
  options.clock = clock.function();
  options.bar_stream = stream;
  {
    Progress progress("epoch 1 training", 2, "steps", options);
    clock.now_s = 1;
    progress.advance();
  }
  const std::string text = read_whole(stream);
  std::fclose(stream);
  EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  ASSERT_GE(text.size(), 4u);
  EXPECT_EQ(text.substr(text.size() - 4), "\r\x1b[K") << text;
}

// Runs `body` with stderr (file descriptor 2) redirected to a file; returns what was written.
template <typename Function>
std::string capture_stderr(Function body) {
  std::string pattern = (fs::temp_directory_path() / "scaffold-progress-XXXXXX").string();
  const int file = ::mkstemp(pattern.data());
  EXPECT_GE(file, 0) << "mkstemp failed for " << pattern;
  std::fflush(stderr);
  const int saved = ::dup(2);
  ::dup2(file, 2);

  body();
  std::fflush(stderr);

  ::dup2(saved, 2);
  ::close(saved);
  ::close(file);
  const std::string text = read_file(pattern);
  fs::remove(pattern);
  return text;
}

TEST_F(ProgressTest, LogLineErasesAndRedrawsBar) {
  ManualClock clock;
  const std::string text = capture_stderr([&clock] {
    setup_logging(Verbosity::kNormal);
    ProgressOptions options;
    options.style = ProgressStyle::kBar;
    options.bar_interval_s = 1;
    options.keep_bar = false;
    options.clock = clock.function();
    Progress progress("epoch 2 training", 4, "steps", options);
    clock.now_s = 1;
    progress.advance();
    spdlog::info("checkpoint written");
  });

  // 80 columns leave a 33-character bar next to this label and these numbers.
  const std::string bar =
      std::string("\repoch 2 training [########") + std::string(25, '.') + "] 1/4 1.00 steps/s 0:01<0:03\x1b[K";
  // Bar, erase, the whole log line, the bar again, and the erase at the end.
  const std::size_t first_bar = text.find(bar);
  ASSERT_EQ(first_bar, 0u) << text;
  const std::string after_bar = text.substr(bar.size());
  ASSERT_EQ(after_bar.rfind("\r\x1b[K[", 0), 0u) << text;
  const std::size_t newline = after_bar.find('\n');
  ASSERT_NE(newline, std::string::npos) << text;
  const std::string log_line = after_bar.substr(4, newline - 4);
  EXPECT_TRUE(std::regex_match(log_line, std::regex(R"(\[\d\d:\d\d:\d\d\]\[rank=0\]\[info\] checkpoint written)")))
      << log_line;
  EXPECT_EQ(after_bar.substr(newline + 1), bar + "\r\x1b[K") << text;
}

// The tiny dataset: one class, 10 volumes of 16^3 voxels.
constexpr const char* kTinyDatasetConfig =
    "problem_scale: 4\nunet_bottleneck_dim: 3\nn_categories: 1\nn_instances_used_per_fractal: 30\n";

TEST(ProgressCommand, PlainLinesWhenNotATerminal) {
  TempDir dir("progress_lines");
  write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyDatasetConfig));
  const scaffold_test::CommandResult result = run_in(
      dir.path(), "SCAFFOLD_PROGRESS_INTERVAL_S=0 " + scaffold_command("generate_dataset -c cfg.yml"));
  ASSERT_EQ(result.exit_code, 0) << result.output;

  // Only whole log lines: no carriage return, no terminal control sequence.
  EXPECT_EQ(result.output.find('\r'), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("\x1b["), std::string::npos) << result.output;
  const std::regex log_line(R"(\[\d\d:\d\d:\d\d\]\[rank=0\]\[\w+\] .*)");
  const std::regex instances_line(R"(.*\[info\] instances: (\d+)/145 \(\d+%\), [\d.]+ instances/s, .*)");
  long previous = 0;
  int instance_lines = 0;
  for (const std::string& line : split_lines(result.output)) {
    EXPECT_TRUE(std::regex_match(line, log_line)) << line;
    std::smatch match;
    if (std::regex_match(line, match, instances_line)) {
      const long count = std::stol(match[1]);
      EXPECT_GE(count, previous) << line;
      previous = count;
      ++instance_lines;
    }
  }
  EXPECT_GT(instance_lines, 1) << result.output;
  EXPECT_EQ(previous, 145) << result.output;
  EXPECT_NE(result.output.find("[info] volumes: 10/10 (100%), "), std::string::npos) << result.output;
}

TEST(ProgressCommand, QuietHidesProgress) {
  TempDir dir("progress_quiet");
  write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyDatasetConfig));
  const scaffold_test::CommandResult result = run_in(
      dir.path(), "SCAFFOLD_PROGRESS_INTERVAL_S=0 " + scaffold_command("generate_dataset -c cfg.yml -q"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output.find("instances:"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("volumes:"), std::string::npos) << result.output;
}

// Runs `command` through the shell with stdout and stderr on a pseudo-terminal
// in raw mode, which leaves "\n" untranslated. Returns the exit code and output.
scaffold_test::CommandResult run_on_terminal(const fs::path& dir, const std::string& command) {
  scaffold_test::CommandResult result;
  termios raw{};
  ::cfmakeraw(&raw);
  winsize size{};
  size.ws_col = 100;
  size.ws_row = 30;
  int master = -1;
  const pid_t pid = ::forkpty(&master, nullptr, &raw, &size);
  if (pid < 0) return result;
  if (pid == 0) {
    ::setenv("TERM", "xterm", 1);
    const std::string full = "cd '" + dir.string() + "' && " + command;
    ::execl("/bin/sh", "sh", "-c", full.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  char buffer[4096];
  for (ssize_t n; (n = ::read(master, buffer, sizeof(buffer))) > 0;) result.output.append(buffer, static_cast<std::size_t>(n));
  ::close(master);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST(ProgressCommand, BarOnATerminalKeepsLogLinesWhole) {
  TempDir dir("progress_bar");
  write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyDatasetConfig));
  const scaffold_test::CommandResult result = run_on_terminal(dir.path(), scaffold_command("generate_dataset -c cfg.yml"));
  ASSERT_EQ(result.exit_code, 0) << result.output;

  // The bars were drawn in place, and each kept its final state on a line of its own.
  EXPECT_NE(result.output.find("\rinstances ["), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("145/145"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("\rvolumes ["), std::string::npos) << result.output;

  // What remains of each line after its last carriage return, without the
  // erase sequences, is a whole log line or a whole bar, never both.
  const std::regex log_line(R"(\[\d\d:\d\d:\d\d\]\[rank=0\]\[\w+\] .*)");
  const std::regex bar_line(R"((class search|instances|volumes) .*/s .*)");
  int log_lines = 0;
  for (std::string line : split_lines(result.output)) {
    const std::size_t last_return = line.rfind('\r');
    if (last_return != std::string::npos) line = line.substr(last_return + 1);
    for (std::size_t erase; (erase = line.find("\x1b[K")) != std::string::npos;) line.erase(erase, 3);
    if (line.empty()) continue;
    const bool is_log = std::regex_match(line, log_line);
    const bool is_bar = std::regex_match(line, bar_line);
    EXPECT_TRUE(is_log != is_bar) << "line: " << line;
    const std::size_t first_tag = line.find("[rank=0]");
    if (first_tag != std::string::npos) {
      EXPECT_EQ(line.find("[rank=0]", first_tag + 1), std::string::npos) << "two log lines in one: " << line;
    }
    if (is_log) ++log_lines;
  }
  EXPECT_GT(log_lines, 3) << result.output;
}

}  // namespace
}  // namespace scaffold
