// Named code regions and a process-wide recorder of trace events, written as
// Chrome trace-event JSON (opens in Perfetto and chrome://tracing).
//
// A TraceRegion marks a region for every tool this build supports. It is an
// NVTX range when SCAFFOLD_HAVE_NVTX is set (CUDA builds, for Nsight Systems)
// and a Caliper region when SCAFFOLD_HAVE_CALIPER is set. While a profile
// window is recorded (train/profiler.hpp) it is also a complete event in the
// recorder. Without any of them a region costs one relaxed atomic load.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace scaffold {

// One complete event ("ph": "X"). Times are steady-clock nanoseconds.
struct TraceEvent {
  std::string name;
  std::string category;  // "region", "cpu_op" or "profiler_step"
  int tid = 0;
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
  std::int64_t step = -1;  // training step current at the start; -1 when none was set
  bool begins_before_window = false;  // a region clipped at the window start
  bool ends_after_window = false;     // a region still open when the window ended, clipped there
};

// Steady-clock nanoseconds, the time base of every event.
std::int64_t trace_clock_ns();

// The kernel's id of the calling thread (gettid), as profilers show it.
int trace_thread_id();

// While armed, regions note their start time and stay listed while open, so
// that a window can include the regions that enclose it. The step profiler
// arms the recorder for its lifetime.
void trace_arm(bool armed);
bool trace_armed();

// Starts recording events, discarding any recorded before. The window starts
// at `start_ns` (trace_clock_ns() time), or now when it is negative.
void trace_begin_window(std::int64_t start_ns = -1);
// Drops the events recorded so far and moves the window start to `start_ns`
// (now when negative), which is how a profiler's warmup steps are recorded but
// discarded.
void trace_restart_window(std::int64_t start_ns = -1);
// Stops recording and returns the window's events sorted by start time,
// including the regions still open, clipped at the window end `end_ns` (now
// when negative).
std::vector<TraceEvent> trace_end_window(std::int64_t end_ns = -1);
bool trace_recording();

// Appends `event` when recording; safe from any thread.
void trace_add(TraceEvent event);

// The training step that new events are labelled with; -1 for none.
void trace_set_step(std::int64_t step);
std::int64_t trace_step();

// A named region from construction to end() or destruction. `name` must
// outlive the region (a string literal), because NVTX and Caliper keep the
// pointer. Regions end in reverse order of their start on each thread.
class TraceRegion {
 public:
  explicit TraceRegion(const char* name);
  ~TraceRegion() { end(); }
  TraceRegion(const TraceRegion&) = delete;
  TraceRegion& operator=(const TraceRegion&) = delete;

  // Ends this region and starts the region `name` in its place, for a
  // sequence of phases such as predict, calculate_loss, backward.
  void next(const char* name);
  void end();

 private:
  void begin(const char* name);

  const char* name_ = nullptr;  // nullptr once ended
  std::int64_t start_ns_ = 0;
  std::int64_t step_ = -1;
  bool listed_ = false;  // in the open-region list (the recorder was armed at the start)
  int tid_ = 0;

  friend std::vector<TraceEvent> trace_end_window(std::int64_t end_ns);
};

// Chrome trace-event JSON of `events` for process `pid`: one "X" event per
// entry with ts and dur in microseconds, plus "M" metadata events naming the
// process `process_name` and each thread seen.
std::string chrome_trace_json(const std::vector<TraceEvent>& events, int pid, const std::string& process_name);

}  // namespace scaffold
