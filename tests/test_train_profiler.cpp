// Tests of the PROFILE_TORCH step profiler in this process: the settings read
// from the environment, the wait/warmup/active schedule, and a trace recorded
// over real LibTorch operators whose events must all come from the active steps.
#include "train/profiler.hpp"

#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "core/trace.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

EnvGetter environment(std::map<std::string, std::string> values) {
  return [values = std::move(values)](const char* name) -> const char* {
    const auto found = values.find(name);
    return found == values.end() ? nullptr : found->second.c_str();
  };
}

TEST(ProfileSettings, DefaultsAndSpellings) {
  EXPECT_FALSE(profile_settings_from_env(environment({})).enabled);
  for (const char* on : {"1", "true", "ON", "Yes"}) {
    const ProfileSettings settings = profile_settings_from_env(environment({{"PROFILE_TORCH", on}}));
    EXPECT_TRUE(settings.enabled) << on;
    EXPECT_EQ(settings.wait, 1);
    EXPECT_EQ(settings.warmup, 1);
    EXPECT_EQ(settings.active, 3);
  }
  for (const char* off : {"0", "false", "off", "no", "", "maybe"}) {
    EXPECT_FALSE(profile_settings_from_env(environment({{"PROFILE_TORCH", off}})).enabled) << off;
  }
}

TEST(ProfileSettings, WindowFromEnvironment) {
  const ProfileSettings settings = profile_settings_from_env(environment(
      {{"PROFILE_TORCH", "1"}, {"PROFILE_TORCH_WAIT", "0"}, {"PROFILE_TORCH_WARMUP", " 2 "}, {"PROFILE_TORCH_ACTIVE", "5"}}));
  EXPECT_EQ(settings.wait, 0);
  EXPECT_EQ(settings.warmup, 2);
  EXPECT_EQ(settings.active, 5);
}

TEST(ProfileSettings, InvalidNumberNamesVariable) {
  try {
    profile_settings_from_env(environment({{"PROFILE_TORCH", "1"}, {"PROFILE_TORCH_ACTIVE", "0"}}));
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("PROFILE_TORCH_ACTIVE = '0' is invalid: it must be an integer >= 1"),
              std::string::npos)
        << error.what();
  }
  EXPECT_THROW(profile_settings_from_env(environment({{"PROFILE_TORCH", "1"}, {"PROFILE_TORCH_WAIT", "x"}})),
               ConfigError);
  // Without PROFILE_TORCH the window variables are not read.
  EXPECT_NO_THROW(profile_settings_from_env(environment({{"PROFILE_TORCH_WAIT", "x"}})));
}

TEST(ProfileSchedule, PhasesOfEachStep) {
  const ProfileSettings settings{true, 2, 1, 3};
  const ProfilePhase expected[] = {ProfilePhase::kWait,   ProfilePhase::kWait,   ProfilePhase::kWarmup,
                                   ProfilePhase::kActive, ProfilePhase::kActive, ProfilePhase::kActive,
                                   ProfilePhase::kDone,   ProfilePhase::kDone};
  for (int step = 0; step < 8; ++step) EXPECT_EQ(profile_phase(settings, step), expected[step]) << step;
}

TEST(ProfileFileName, FollowsReferencePattern) {
  Config config;
  config.problem_scale = 5;
  config.epochs = -1;
  config.n_instances_used_per_fractal = 30;
  EXPECT_EQ(profile_file_name("node7", 4, 2, 8, config, 1700000000),
            "torch-node7-r4-N2-n8-ps5-e-1-nipf30-1700000000.json");
}

// Steps that each run one region with a few LibTorch operators.
void run_steps(StepProfiler& profiler, int steps) {
  for (int step = 0; step < steps; ++step) {
    {
      TraceRegion region("run_training_batch");
      const torch::Tensor x = torch::ones({8, 8});
      const torch::Tensor y = torch::matmul(x, x).sum();
      region.next("step_and_update");
      EXPECT_EQ(y.item<float>(), 512.0f);
    }
    profiler.step();
  }
}

TEST(StepProfiler, TraceHoldsOnlyActiveSteps) {
  scaffold_test::TempDir dir("profiler_window");
  const fs::path path = dir.path() / "trace.json";
  {
    StepProfiler profiler(ProfileSettings{true, 1, 2, 2}, path);
    EXPECT_FALSE(at::hasGlobalCallbacks());  // step 0 is a wait step
    run_steps(profiler, 7);
  }
  EXPECT_FALSE(at::hasGlobalCallbacks());

  const nlohmann::json trace = nlohmann::json::parse(read_file(path));
  std::multiset<std::int64_t> region_steps;
  std::set<std::string> profiler_steps;
  int operators = 0;
  for (const nlohmann::json& event : trace["traceEvents"]) {
    if (event["ph"] != "X") continue;
    // Steps 0 (wait) and 1-2 (warmup, discarded) leave nothing; 3 and 4 are active.
    const std::int64_t step = event["args"].value("step", std::int64_t{-1});
    EXPECT_TRUE(step == 3 || step == 4) << event;
    const std::string name = event["name"];
    if (event["cat"] == "profiler_step") profiler_steps.insert(name);
    if (name == "run_training_batch") region_steps.insert(step);
    if (name.rfind("aten::", 0) == 0) ++operators;
    EXPECT_GE(event["dur"].get<double>(), 0.0) << event;
  }
  EXPECT_EQ(profiler_steps, (std::set<std::string>{"ProfilerStep#3", "ProfilerStep#4"}));
  EXPECT_EQ(region_steps, (std::multiset<std::int64_t>{3, 4}));
  EXPECT_GT(operators, 0);
}

TEST(StepProfiler, NoOperatorEventsAfterWindow) {
  scaffold_test::TempDir dir("profiler_after");
  const fs::path path = dir.path() / "trace.json";
  StepProfiler profiler(ProfileSettings{true, 0, 0, 1}, path);
  run_steps(profiler, 1);
  ASSERT_TRUE(fs::exists(path));
  EXPECT_FALSE(trace_recording());
  EXPECT_FALSE(trace_armed());
  EXPECT_FALSE(at::hasGlobalCallbacks());

  // Operators after the window are not recorded anywhere.
  torch::ones({4}).add_(1);
  EXPECT_TRUE(trace_end_window().empty());
}

TEST(StepProfiler, DisabledWritesNothing) {
  scaffold_test::TempDir dir("profiler_off");
  const fs::path path = dir.path() / "trace.json";
  {
    StepProfiler profiler(ProfileSettings{}, path);
    run_steps(profiler, 3);
    EXPECT_FALSE(trace_armed());
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(StepProfiler, EndInsideWindowWritesPartialTrace) {
  scaffold_test::TempDir dir("profiler_partial");
  const fs::path path = dir.path() / "trace.json";
  {
    StepProfiler profiler(ProfileSettings{true, 0, 1, 3}, path);
    run_steps(profiler, 2);  // step 0 is warmup, step 1 the only active one
  }
  const nlohmann::json trace = nlohmann::json::parse(read_file(path));
  int profiler_steps = 0;
  for (const nlohmann::json& event : trace["traceEvents"]) {
    if (event["ph"] == "X" && event["cat"] == "profiler_step") {
      EXPECT_EQ(event["name"], "ProfilerStep#1");
      ++profiler_steps;
    }
  }
  EXPECT_EQ(profiler_steps, 1);
}

}  // namespace
}  // namespace scaffold
