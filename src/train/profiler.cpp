#include "train/profiler.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <utility>

#include <ATen/record_function.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/atomic_file.hpp"
#include "core/trace.hpp"

namespace scaffold {

namespace {

std::string to_lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

int step_count_from_env(const EnvGetter& get_env, const char* name, int default_value, int minimum,
                        const char* meaning) {
  const char* text = get_env(name);
  if (text == nullptr || *text == '\0') return default_value;
  const std::optional<int> value = parse_env_int(text);
  if (!value || *value < minimum) {
    throw ConfigError(fmt::format("{} = '{}' is invalid: it must be an integer >= {} ({}); unset it for the "
                                  "default {}",
                                  name, text, minimum, meaning, default_value));
  }
  return *value;
}

// The start time of one operator call, passed from the start to the end callback.
struct OperatorContext final : at::ObserverContext {
  std::int64_t start_ns = 0;
  std::int64_t step = -1;
};

std::unique_ptr<at::ObserverContext> on_operator_start(const at::RecordFunction&) {
  auto context = std::make_unique<OperatorContext>();
  context->start_ns = trace_clock_ns();
  context->step = trace_step();
  return context;
}

void on_operator_end(const at::RecordFunction& function, at::ObserverContext* context) {
  const auto* started = static_cast<const OperatorContext*>(context);
  if (started == nullptr) return;
  TraceEvent event;
  event.name = function.name();
  event.category = "cpu_op";
  event.tid = trace_thread_id();
  event.start_ns = started->start_ns;
  event.end_ns = trace_clock_ns();
  event.step = started->step;
  trace_add(std::move(event));
}

}  // namespace

ProfileSettings profile_settings_from_env(const EnvGetter& get_env) {
  ProfileSettings settings;
  const char* flag = get_env("PROFILE_TORCH");
  const std::string value = to_lower(flag == nullptr ? "" : flag);
  if (value == "1" || value == "true" || value == "on" || value == "yes") {
    settings.enabled = true;
  } else if (!(value.empty() || value == "0" || value == "false" || value == "off" || value == "no")) {
    spdlog::warn("PROFILE_TORCH = '{}' is not one of 1, true, on, yes (profile) or 0, false, off, no; profiling stays "
                 "off",
                 flag);
  }
  if (!settings.enabled) return settings;

  settings.wait = step_count_from_env(get_env, "PROFILE_TORCH_WAIT", settings.wait, 0, "training steps skipped first");
  settings.warmup = step_count_from_env(get_env, "PROFILE_TORCH_WARMUP", settings.warmup, 0,
                                        "training steps recorded and discarded before the trace");
  settings.active = step_count_from_env(get_env, "PROFILE_TORCH_ACTIVE", settings.active, 1,
                                        "training steps in the trace");
  return settings;
}

ProfilePhase profile_phase(const ProfileSettings& settings, std::int64_t step) {
  if (step < settings.wait) return ProfilePhase::kWait;
  if (step < settings.wait + settings.warmup) return ProfilePhase::kWarmup;
  if (step < std::int64_t{settings.wait} + settings.warmup + settings.active) return ProfilePhase::kActive;
  return ProfilePhase::kDone;
}

std::string profile_file_name(const std::string& host, int rank, int nodes, int world_size, const Config& config,
                              std::int64_t unix_time_s) {
  return fmt::format("torch-{}-r{}-N{}-n{}-ps{}-e{}-nipf{}-{}.json", host, rank, nodes, world_size,
                     config.problem_scale, config.epochs, config.n_instances_used_per_fractal, unix_time_s);
}

StepProfiler::StepProfiler(const ProfileSettings& settings, std::filesystem::path output_path)
    : settings_(settings), output_path_(std::move(output_path)) {
  if (!settings_.enabled) return;

  const int first = settings_.wait + settings_.warmup;
  const std::string steps = settings_.active == 1 ? fmt::format("step {}", first)
                                                  : fmt::format("steps {} to {}", first, first + settings_.active - 1);
  spdlog::info("PROFILE_TORCH: tracing training {} (wait {}, warmup {}, active {}); trace file {}", steps,
               settings_.wait, settings_.warmup, settings_.active, output_path_.string());
  trace_arm(true);
  step_start_ns_ = trace_clock_ns();
  trace_set_step(0);
  phase_ = ProfilePhase::kWait;
  enter(profile_phase(settings_, 0));
}

StepProfiler::~StepProfiler() {
  if (!settings_.enabled) return;
  if (phase_ == ProfilePhase::kActive) {
    write_trace("training ended inside the window", trace_clock_ns());
  } else if (phase_ != ProfilePhase::kDone) {
    spdlog::warn("PROFILE_TORCH: training ended after {} steps, before the first traced step {}; no trace written",
                 step_, settings_.wait + settings_.warmup);
    if (callback_handle_ != 0) at::removeCallback(callback_handle_);
    callback_handle_ = 0;
    trace_end_window();
  }
  trace_set_step(-1);
  trace_arm(false);
}

void StepProfiler::step() {
  if (!settings_.enabled || phase_ == ProfilePhase::kDone) return;

  // The step that just ended, as torch.profiler's "ProfilerStep#N" range.
  const std::int64_t now_ns = trace_clock_ns();
  if (phase_ == ProfilePhase::kActive) {
    TraceEvent event;
    event.name = fmt::format("ProfilerStep#{}", step_);
    event.category = "profiler_step";
    event.tid = trace_thread_id();
    event.start_ns = step_start_ns_;
    event.end_ns = now_ns;
    event.step = step_;
    trace_add(std::move(event));
  }

  ++step_;
  step_start_ns_ = now_ns;
  trace_set_step(step_);
  enter(profile_phase(settings_, step_));
}

void StepProfiler::enter(ProfilePhase phase) {
  if (phase == phase_) return;
  const ProfilePhase previous = phase_;
  phase_ = phase;

  const bool recording_before = previous == ProfilePhase::kWarmup || previous == ProfilePhase::kActive;
  if ((phase == ProfilePhase::kWarmup || phase == ProfilePhase::kActive) && !recording_before) {
    // Operator callbacks only while recording, so that they cost nothing outside the window.
    callback_handle_ = at::addGlobalCallback(at::RecordFunctionCallback(on_operator_start, on_operator_end));
    trace_begin_window(step_start_ns_);
  } else if (phase == ProfilePhase::kActive) {
    trace_restart_window(step_start_ns_);
  } else if (phase == ProfilePhase::kDone) {
    write_trace("window complete", step_start_ns_);
  }
}

void StepProfiler::write_trace(const char* reason, std::int64_t end_ns) {
  if (callback_handle_ != 0) at::removeCallback(callback_handle_);
  callback_handle_ = 0;
  const std::vector<TraceEvent> events = trace_end_window(end_ns);
  phase_ = ProfilePhase::kDone;
  trace_arm(false);

  const std::int64_t steps = std::count_if(events.begin(), events.end(), [](const TraceEvent& event) {
    return event.category == "profiler_step";
  });
  try {
    const std::string process_name = fmt::format("scaffold {}", output_path_.stem().string());
    write_file_atomic(output_path_, chrome_trace_json(events, static_cast<int>(::getpid()), process_name));
    spdlog::info("PROFILE_TORCH: trace of {} training step{} ({} events, {}) written to {}", steps,
                 steps == 1 ? "" : "s", events.size(), reason, output_path_.string());
  } catch (const std::exception& error) {
    spdlog::error("PROFILE_TORCH: cannot write the trace {}: {}", output_path_.string(), error.what());
  }
}

}  // namespace scaffold
