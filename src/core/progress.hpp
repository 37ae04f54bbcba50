// Progress display for long loops (fractal generation, dataset volumes,
// training steps): a bar redrawn in place when stderr is a terminal, periodic
// log lines otherwise.
//
// The bar is the last line of the terminal. core/logging.cpp routes every log
// line through write_above_progress_bar, which erases the bar, writes the log
// line and redraws the bar, so log lines and the bar never share a line.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

namespace scaffold {

// Seconds on a monotonic clock. Tests inject their own.
using ProgressClock = std::function<double()>;

enum class ProgressStyle {
  kAuto,    // kBar when stderr is a terminal (and TERM is not "dumb"), else kLines
  kBar,     // one line redrawn in place with '\r'
  kLines,   // a log line at most every line_interval_s
  kHidden,  // nothing; counting still works
};

// Process-wide switch: false hides every progress display. The command sets
// it to false with -q and on every rank but 0. Default: true.
void set_progress_enabled(bool enabled);
bool progress_enabled();

// Seconds between progress log lines when ProgressOptions::line_interval_s is
// negative: SCAFFOLD_PROGRESS_INTERVAL_S (read at the first call) when it is a
// number >= 0, else 10.
double default_progress_line_interval_s();

struct ProgressOptions {
  ProgressStyle style = ProgressStyle::kAuto;
  double line_interval_s = -1;  // < 0: default_progress_line_interval_s()
  double bar_interval_s = 0.1;  // minimum time between two redraws of the bar
  // true leaves the finished bar on screen; false erases it (for loops whose
  // end is followed by a summary log line anyway).
  bool keep_bar = true;
  ProgressClock clock = {};                            // empty: std::chrono::steady_clock
  std::FILE* bar_stream = nullptr;                     // nullptr: stderr
  std::function<void(const std::string&)> write_line = {};  // empty: spdlog::info
};

// Rate and remaining time after `done` of `total` items in `elapsed_s`
// seconds, at the average rate since the start: rate = done / elapsed_s,
// remaining = (total - done) / rate. No remaining time when nothing is done
// yet, no time has passed or the total is unknown (<= 0).
struct ProgressEstimate {
  double rate_per_s = 0;
  std::optional<double> remaining_s;
};
ProgressEstimate estimate_progress(std::int64_t done, std::int64_t total, double elapsed_s);

// "M:SS" below one hour, "H:MM:SS" above (whole seconds, rounded down).
std::string format_duration(double seconds);

// A counter with a throttled display. advance() may be called from any
// thread, once per item: it costs an atomic add and a clock read, and only
// the call that finds the display interval passed formats and writes.
//
// Line mode writes at most one line per line_interval_s. finish() adds a final
// line only when an earlier line was written and the count changed since. A
// loop shorter than the interval therefore stays silent, and its own summary
// log line reports it.
class Progress {
 public:
  // `unit` names the items in the rate ("instances" gives "45.2 instances/s").
  Progress(std::string label, std::int64_t total, std::string unit, ProgressOptions options = {});
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(std::int64_t count = 1);

  // Extra text shown after the numbers, such as "1200 attempts". Thread-safe.
  void set_detail(std::string detail);

  // Writes the final state once; later calls and advance() do nothing.
  void finish();

  std::int64_t done() const { return done_.load(std::memory_order_relaxed); }
  ProgressStyle style() const { return style_; }

  // The log line for the current state at time `now_s` (clock seconds):
  // "epoch 3 training: 4/7 (57%), 2.10 steps/s, 0:01 elapsed, 0:01 left".
  std::string line_text(double now_s) const;

 private:
  std::string line_text(std::int64_t done, double now_s) const;
  std::string detail_locked() const;
  std::string bar_text(double now_s, int columns) const;
  void draw(double now_s, bool final);

  std::string label_;
  std::int64_t total_;
  std::string unit_;
  ProgressOptions options_;
  ProgressStyle style_;
  ProgressClock clock_;
  double start_s_;
  double interval_s_;

  std::atomic<std::int64_t> done_{0};
  std::atomic<double> next_draw_s_;
  mutable std::mutex mutex_;  // guards the fields below and serialises drawing
  std::string detail_;
  bool lines_written_ = false;
  std::int64_t last_line_done_ = -1;  // the count in the last line written
  bool finished_ = false;
};

// Runs `write`, which writes whole lines to stderr, with the progress bar
// erased first and redrawn after, so the two never mix on one line. Without
// a visible bar it only runs `write`.
void write_above_progress_bar(const std::function<void()>& write);

}  // namespace scaffold
