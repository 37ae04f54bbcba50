// The training-step profiler behind PROFILE_TORCH: records a bounded window
// of training steps (the named regions of core/trace.hpp plus every LibTorch
// operator) and writes it as a Chrome trace JSON file.
//
// Debian's LibTorch 1.13 is built without Kineto, so torch's own profiler
// cannot write a trace here. This profiler uses at::RecordFunction global
// callbacks instead, added only while the window is recorded.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "core/config.hpp"
#include "dist/launch.hpp"

namespace scaffold {

// The window, with torch.profiler.schedule's meaning (repeat 1): skip `wait`
// steps, record `warmup` steps and discard them, record `active` steps.
struct ProfileSettings {
  bool enabled = false;
  int wait = 1;
  int warmup = 1;
  int active = 3;
};

// Reads PROFILE_TORCH (1, true, on or yes in any letter case enable it; 0,
// false, off, no or empty leave it off; anything else leaves it off with a
// warning) and PROFILE_TORCH_WAIT, _WARMUP and _ACTIVE (integers; wait and
// warmup >= 0, active >= 1). Throws ConfigError naming the variable for an
// invalid number while profiling is enabled.
ProfileSettings profile_settings_from_env(const EnvGetter& get_env = [](const char* name) {
  return std::getenv(name);
});

enum class ProfilePhase { kWait, kWarmup, kActive, kDone };

// The phase of training step `step` (0 = the first step after warmup_batches).
ProfilePhase profile_phase(const ProfileSettings& settings, std::int64_t step);

// The reference's trace file name:
// torch-<host>-r<rank>-N<nodes>-n<world>-ps<scale>-e<epochs>-nipf<n>-<unix time>.json
std::string profile_file_name(const std::string& host, int rank, int nodes, int world_size, const Config& config,
                              std::int64_t unix_time_s);

// Counts training steps and records the window. Construct it just before the
// first training step and call step() after each one (torch.profiler's
// prof.step()). The trace is written when the last active step ends, or by
// the destructor when training ends inside the window. Write failures are
// logged, not thrown, as in the reference.
class StepProfiler {
 public:
  // `settings.enabled` false makes every call a no-op.
  StepProfiler(const ProfileSettings& settings, std::filesystem::path output_path);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  void step();

  const std::filesystem::path& output_path() const { return output_path_; }

 private:
  void enter(ProfilePhase phase);
  // Ends the window at `end_ns` (trace_clock_ns() time) and writes the file.
  void write_trace(const char* reason, std::int64_t end_ns);

  ProfileSettings settings_;
  std::filesystem::path output_path_;
  std::int64_t step_ = 0;
  std::int64_t step_start_ns_ = 0;
  ProfilePhase phase_ = ProfilePhase::kDone;
  std::uint64_t callback_handle_ = 0;  // at::CallbackHandle; 0 when no callback is registered
};

}  // namespace scaffold
