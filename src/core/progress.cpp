#include "core/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace scaffold {

namespace {

constexpr double kDefaultLineInterval_s = 10.0;
constexpr int kDefaultColumns = 80;

std::atomic<bool> g_progress_enabled{true};

// The terminal's last line while a bar is shown. One bar at a time owns it;
// a newer bar replaces an older one.
struct StatusLine {
  std::mutex mutex;
  std::FILE* stream = nullptr;
  std::string text;  // empty when no bar is visible
};

StatusLine& status_line() {
  static StatusLine line;
  return line;
}

// "\r" returns to the line start and "\x1b[K" erases to its end, so a shorter
// text leaves no remains of a longer one.
void show_status_line(std::FILE* stream, const std::string& text, bool final, bool keep) {
  StatusLine& line = status_line();
  const std::lock_guard lock(line.mutex);
  if (final && !keep) {
    std::fputs("\r\x1b[K", stream);
    line.text.clear();
  } else {
    std::fprintf(stream, "\r%s\x1b[K%s", text.c_str(), final ? "\n" : "");
    line.text = final ? std::string() : text;
  }
  line.stream = stream;
  std::fflush(stream);
}

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool stderr_is_terminal() {
  if (::isatty(STDERR_FILENO) == 0) return false;
  const char* term = std::getenv("TERM");
  return term == nullptr || std::string_view(term) != "dumb";
}

int terminal_columns(std::FILE* stream) {
  winsize size{};
  if (::ioctl(::fileno(stream), TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return kDefaultColumns;
}

std::string format_rate(double rate) {
  if (rate >= 100) return fmt::format("{:.0f}", rate);
  if (rate >= 10) return fmt::format("{:.1f}", rate);
  return fmt::format("{:.2f}", rate);
}

}  // namespace

void set_progress_enabled(bool enabled) { g_progress_enabled.store(enabled); }

bool progress_enabled() { return g_progress_enabled.load(); }

double default_progress_line_interval_s() {
  // Read once, so that an invalid value is reported once and not per loop.
  static const double interval_s = [] {
    const char* text = std::getenv("SCAFFOLD_PROGRESS_INTERVAL_S");
    if (text == nullptr || *text == '\0') return kDefaultLineInterval_s;
    char* end = nullptr;
    const double value = std::strtod(text, &end);
    if (*end != '\0' || !std::isfinite(value) || value < 0) {
      spdlog::warn("SCAFFOLD_PROGRESS_INTERVAL_S = '{}' is invalid: it must be a number of seconds >= 0; using {} s",
                   text, kDefaultLineInterval_s);
      return kDefaultLineInterval_s;
    }
    return value;
  }();
  return interval_s;
}

ProgressEstimate estimate_progress(std::int64_t done, std::int64_t total, double elapsed_s) {
  ProgressEstimate estimate;
  if (done <= 0 || !(elapsed_s > 0)) return estimate;
  estimate.rate_per_s = static_cast<double>(done) / elapsed_s;
  if (total > 0) {
    estimate.remaining_s = static_cast<double>(std::max<std::int64_t>(total - done, 0)) / estimate.rate_per_s;
  }
  return estimate;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto whole = static_cast<std::int64_t>(seconds);
  const std::int64_t hours = whole / 3600;
  const std::int64_t minutes = whole / 60 % 60;
  const std::int64_t secs = whole % 60;
  if (hours > 0) return fmt::format("{}:{:02d}:{:02d}", hours, minutes, secs);
  return fmt::format("{}:{:02d}", minutes, secs);
}

Progress::Progress(std::string label, std::int64_t total, std::string unit, ProgressOptions options)
    : label_(std::move(label)), total_(total), unit_(std::move(unit)), options_(std::move(options)) {
  clock_ = options_.clock ? options_.clock : ProgressClock(steady_seconds);
  if (options_.bar_stream == nullptr) options_.bar_stream = stderr;

  style_ = options_.style;
  if (!progress_enabled()) {
    style_ = ProgressStyle::kHidden;
  } else if (style_ == ProgressStyle::kAuto) {
    style_ = stderr_is_terminal() ? ProgressStyle::kBar : ProgressStyle::kLines;
  }
  interval_s_ = style_ == ProgressStyle::kBar ? options_.bar_interval_s
                                              : (options_.line_interval_s >= 0 ? options_.line_interval_s
                                                                               : default_progress_line_interval_s());
  start_s_ = clock_();
  next_draw_s_.store(start_s_ + interval_s_);
}

Progress::~Progress() { finish(); }

void Progress::advance(std::int64_t count) {
  done_.fetch_add(count, std::memory_order_relaxed);
  if (style_ == ProgressStyle::kHidden) return;

  const double now_s = clock_();
  if (now_s < next_draw_s_.load(std::memory_order_relaxed)) return;

  // One thread draws; the others go on counting instead of waiting.
  std::unique_lock lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock() || finished_ || now_s < next_draw_s_.load(std::memory_order_relaxed)) return;
  next_draw_s_.store(now_s + interval_s_, std::memory_order_relaxed);
  draw(now_s, false);
}

void Progress::set_detail(std::string detail) {
  const std::lock_guard lock(mutex_);
  detail_ = std::move(detail);
}

void Progress::finish() {
  const std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  if (style_ == ProgressStyle::kHidden) return;
  if (style_ == ProgressStyle::kLines && (!lines_written_ || last_line_done_ == done())) return;
  draw(clock_(), true);
}

std::string Progress::detail_locked() const { return detail_.empty() ? std::string() : ", " + detail_; }

std::string Progress::line_text(double now_s) const { return line_text(done(), now_s); }

std::string Progress::line_text(std::int64_t done, double now_s) const {
  const double elapsed_s = now_s - start_s_;
  const ProgressEstimate estimate = estimate_progress(done, total_, elapsed_s);

  std::string text = fmt::format("{}: {}", label_, done);
  if (total_ > 0) {
    const double percent = 100.0 * static_cast<double>(done) / static_cast<double>(total_);
    text += fmt::format("/{} ({:.0f}%)", total_, std::floor(percent));
  }
  text += fmt::format(", {} {}/s, {} elapsed", format_rate(estimate.rate_per_s), unit_, format_duration(elapsed_s));
  if (estimate.remaining_s && done < total_) text += fmt::format(", {} left", format_duration(*estimate.remaining_s));
  return text + detail_locked();
}

std::string Progress::bar_text(double now_s, int columns) const {
  const std::int64_t done = done_.load(std::memory_order_relaxed);
  const double elapsed_s = now_s - start_s_;
  const ProgressEstimate estimate = estimate_progress(done, total_, elapsed_s);

  std::string numbers = total_ > 0 ? fmt::format(" {}/{}", done, total_) : fmt::format(" {}", done);
  numbers += fmt::format(" {} {}/s {}", format_rate(estimate.rate_per_s), unit_, format_duration(elapsed_s));
  if (estimate.remaining_s && done < total_) {
    numbers += '<';
    numbers += format_duration(*estimate.remaining_s);
  }
  numbers += detail_locked();

  // "label [#####.....] numbers", the bar taking what the terminal width leaves.
  const int fixed = static_cast<int>(label_.size() + numbers.size()) + 3;
  const int width = std::clamp(columns - 1 - fixed, 0, 40);
  if (width < 10 || total_ <= 0) {
    std::string text = label_ + numbers;
    if (static_cast<int>(text.size()) >= columns) text.resize(static_cast<std::size_t>(std::max(columns - 1, 0)));
    return text;
  }
  const double fraction = std::clamp(static_cast<double>(done) / static_cast<double>(total_), 0.0, 1.0);
  const auto filled = static_cast<int>(fraction * width);
  return fmt::format("{} [{}{}]{}", label_, std::string(static_cast<std::size_t>(filled), '#'),
                     std::string(static_cast<std::size_t>(width - filled), '.'), numbers);
}

void Progress::draw(double now_s, bool final) {
  if (style_ == ProgressStyle::kBar) {
    show_status_line(options_.bar_stream, bar_text(now_s, terminal_columns(options_.bar_stream)), final,
                     options_.keep_bar);
    return;
  }
  last_line_done_ = done();
  const std::string text = line_text(last_line_done_, now_s);
  if (options_.write_line) {
    options_.write_line(text);
  } else {
    spdlog::info("{}", text);
  }
  lines_written_ = true;
}

void write_above_progress_bar(const std::function<void()>& write) {
  StatusLine& line = status_line();
  const std::lock_guard lock(line.mutex);
  if (line.text.empty()) {
    write();
    return;
  }
  std::fputs("\r\x1b[K", line.stream);
  std::fflush(line.stream);
  write();
  std::fprintf(line.stream, "\r%s\x1b[K", line.text.c_str());
  std::fflush(line.stream);
}

}  // namespace scaffold
