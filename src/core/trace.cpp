#include "core/trace.hpp"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <utility>

#include <nlohmann/json.hpp>

#if SCAFFOLD_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#endif
#if SCAFFOLD_HAVE_CALIPER
#include <caliper/cali.h>
#endif

namespace scaffold {

namespace {

struct Recorder {
  std::atomic<bool> armed{false};
  std::atomic<bool> recording{false};
  std::atomic<std::int64_t> window_start_ns{0};
  std::atomic<std::int64_t> step{-1};

  std::mutex mutex;  // guards the three containers
  std::vector<TraceEvent> events;
  std::vector<const TraceRegion*> open_regions;
  std::map<int, std::string> thread_names;
};

Recorder& recorder() {
  static Recorder instance;
  return instance;
}

// Remembers the calling thread's name the first time it records an event.
void note_thread_name(Recorder& state, int tid) {
  thread_local bool noted = false;
  if (noted) return;
  noted = true;
  char name[64] = {};
  if (::pthread_getname_np(::pthread_self(), name, sizeof(name)) != 0) name[0] = '\0';
  state.thread_names.emplace(tid, name[0] != '\0' ? name : "thread " + std::to_string(tid));
}

}  // namespace

std::int64_t trace_clock_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int trace_thread_id() {
  thread_local const int tid = static_cast<int>(::syscall(SYS_gettid));
  return tid;
}

void trace_arm(bool armed) { recorder().armed.store(armed); }

bool trace_armed() { return recorder().armed.load(std::memory_order_relaxed); }

void trace_begin_window(std::int64_t start_ns) {
  Recorder& state = recorder();
  const std::lock_guard lock(state.mutex);
  state.events.clear();
  state.window_start_ns.store(start_ns >= 0 ? start_ns : trace_clock_ns());
  state.recording.store(true);
}

void trace_restart_window(std::int64_t start_ns) {
  Recorder& state = recorder();
  const std::lock_guard lock(state.mutex);
  state.events.clear();
  state.window_start_ns.store(start_ns >= 0 ? start_ns : trace_clock_ns());
}

std::vector<TraceEvent> trace_end_window(std::int64_t end_ns) {
  Recorder& state = recorder();
  const std::lock_guard lock(state.mutex);
  if (end_ns < 0) end_ns = trace_clock_ns();
  const std::int64_t window_start_ns = state.window_start_ns.load();
  if (state.recording.exchange(false)) {
    for (const TraceRegion* region : state.open_regions) {
      TraceEvent event;
      event.name = region->name_;
      event.category = "region";
      event.tid = region->tid_;
      event.start_ns = std::max(region->start_ns_, window_start_ns);
      event.end_ns = end_ns;
      event.step = region->step_;
      event.begins_before_window = region->start_ns_ < window_start_ns;
      event.ends_after_window = true;
      state.events.push_back(std::move(event));
    }
  }
  std::vector<TraceEvent> events = std::move(state.events);
  state.events.clear();

  // Events that ended after the window end (on other threads, or before the
  // lock was taken): operators belong to the next step, regions are clipped.
  std::erase_if(events, [end_ns](const TraceEvent& event) {
    return event.end_ns > end_ns && event.category != "region";
  });
  for (TraceEvent& event : events) {
    if (event.end_ns > end_ns) {
      event.end_ns = end_ns;
      event.ends_after_window = true;
    }
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.start_ns < b.start_ns; });
  return events;
}

bool trace_recording() { return recorder().recording.load(std::memory_order_relaxed); }

void trace_add(TraceEvent event) {
  Recorder& state = recorder();
  if (!state.recording.load(std::memory_order_relaxed)) return;
  const std::lock_guard lock(state.mutex);
  // Events that started before the window belong to discarded warmup steps.
  if (!state.recording.load() || event.start_ns < state.window_start_ns.load()) return;
  if (event.tid == trace_thread_id()) note_thread_name(state, event.tid);
  state.events.push_back(std::move(event));
}

void trace_set_step(std::int64_t step) { recorder().step.store(step); }

std::int64_t trace_step() { return recorder().step.load(std::memory_order_relaxed); }

TraceRegion::TraceRegion(const char* name) { begin(name); }

void TraceRegion::begin(const char* name) {
  name_ = name;
#if SCAFFOLD_HAVE_NVTX
  nvtxRangePushA(name);
#endif
#if SCAFFOLD_HAVE_CALIPER
  cali_begin_region(name);
#endif
  if (!trace_armed()) return;

  Recorder& state = recorder();
  start_ns_ = trace_clock_ns();
  step_ = trace_step();
  tid_ = trace_thread_id();
  const std::lock_guard lock(state.mutex);
  state.open_regions.push_back(this);
  listed_ = true;
}

void TraceRegion::next(const char* name) {
  end();
  begin(name);
}

void TraceRegion::end() {
  if (name_ == nullptr) return;
#if SCAFFOLD_HAVE_CALIPER
  cali_end_region(name_);
#endif
#if SCAFFOLD_HAVE_NVTX
  nvtxRangePop();
#endif

  if (listed_) {
    Recorder& state = recorder();
    const std::int64_t end_ns = trace_clock_ns();
    const std::lock_guard lock(state.mutex);
    // Usually the newest entry: regions end in reverse order of their start.
    const auto found = std::find(state.open_regions.rbegin(), state.open_regions.rend(), this);
    if (found != state.open_regions.rend()) state.open_regions.erase(std::next(found).base());
    listed_ = false;

    const std::int64_t window_start_ns = state.window_start_ns.load();
    if (state.recording.load() && end_ns >= window_start_ns) {
      TraceEvent event;
      event.name = name_;
      event.category = "region";
      event.tid = tid_;
      event.start_ns = std::max(start_ns_, window_start_ns);
      event.end_ns = end_ns;
      event.step = step_;
      event.begins_before_window = start_ns_ < window_start_ns;
      if (tid_ == trace_thread_id()) note_thread_name(state, tid_);
      state.events.push_back(std::move(event));
    }
  }
  name_ = nullptr;
}

std::string chrome_trace_json(const std::vector<TraceEvent>& events, int pid, const std::string& process_name) {
  nlohmann::json trace_events = nlohmann::json::array();
  trace_events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"tid", 0},
                          {"args", {{"name", process_name}}}});

  std::map<int, std::string> names;
  {
    Recorder& state = recorder();
    const std::lock_guard lock(state.mutex);
    names = state.thread_names;
  }
  std::map<int, bool> seen;
  for (const TraceEvent& event : events) {
    if (seen.emplace(event.tid, true).second) {
      const auto found = names.find(event.tid);
      const std::string name = found != names.end() ? found->second : "thread " + std::to_string(event.tid);
      trace_events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", event.tid},
                              {"args", {{"name", name}}}});
    }
  }

  for (const TraceEvent& event : events) {
    nlohmann::json args = nlohmann::json::object();
    if (event.step >= 0) args["step"] = event.step;
    if (event.begins_before_window) args["begins_before_window"] = true;
    if (event.ends_after_window) args["ends_after_window"] = true;
    trace_events.push_back({{"name", event.name},
                            {"cat", event.category},
                            {"ph", "X"},
                            {"ts", static_cast<double>(event.start_ns) / 1e3},
                            {"dur", static_cast<double>(event.end_ns - event.start_ns) / 1e3},
                            {"pid", pid},
                            {"tid", event.tid},
                            {"args", args}});
  }

  nlohmann::json trace;
  trace["traceEvents"] = std::move(trace_events);
  trace["displayTimeUnit"] = "ms";
  return trace.dump() + "\n";
}

}  // namespace scaffold
