// Tests of the scaffold command's observability options with real runs: -v and
// -q after the subcommand, the PROFILE_TORCH trace of a tiny benchmark, and
// the MLPerf log checked against the run's own train_stats.csv.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "train/run_files.hpp"

namespace fs = std::filesystem;

using scaffold_test::CommandResult;
using scaffold_test::only_run_dir;
using scaffold_test::run_in;
using scaffold_test::scaffold_command;
using scaffold_test::TempDir;

namespace {

// One class, 5 volumes of 16^3 voxels: 3 training (3 steps per epoch) and 2
// validation; a 1-level U-Net. target_dice 1.0 is never reached, so both epochs run.
constexpr const char* kTinyConfig = R"(problem_scale: 4
unet_bottleneck_dim: 3
n_categories: 1
n_instances_used_per_fractal: 15
val_split: 40
target_dice: 1.0
epochs: 2
warmup_batches: 1
checkpoint_interval: 1
)";

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

// The JSON objects of the ":::MLLOG " lines of `text`, in order.
std::vector<nlohmann::json> mllog_records(const std::string& text) {
  const std::string prefix = ":::MLLOG ";
  std::vector<nlohmann::json> records;
  for (const std::string& line : split_lines(text)) {
    if (line.rfind(prefix, 0) == 0) records.push_back(nlohmann::json::parse(line.substr(prefix.size())));
  }
  return records;
}

}  // namespace

TEST(CliVerbosity, QuietAfterSubcommand) {
  TempDir dir("cli_quiet");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyConfig));
  const CommandResult normal = run_in(dir.path(), scaffold_command("generate_dataset -c cfg.yml"));
  ASSERT_EQ(normal.exit_code, 0) << normal.output;
  EXPECT_TRUE(contains(normal.output, "[info] dataset ready")) << normal.output;

  const CommandResult quiet = run_in(dir.path(), scaffold_command("generate_dataset -c cfg.yml -q"));
  ASSERT_EQ(quiet.exit_code, 0) << quiet.output;
  EXPECT_FALSE(contains(quiet.output, "[info]")) << quiet.output;

  const CommandResult before = run_in(dir.path(), scaffold_command("-q generate_dataset -c cfg.yml"));
  ASSERT_EQ(before.exit_code, 0) << before.output;
  EXPECT_FALSE(contains(before.output, "[info]")) << before.output;
}

TEST(CliVerbosity, VerboseAfterSubcommand) {
  TempDir dir("cli_verbose");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyConfig));
  const CommandResult result = run_in(dir.path(), scaffold_command("generate_dataset -c cfg.yml --verbose"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "[debug] class search: 1 of 1 classes")) << result.output;
}

TEST(CliVerbosity, QuietAfterBenchmarkOptionsKeepsErrors) {
  // An unusable base_run_dir fails after the first info lines of a benchmark.
  TempDir dir("cli_quiet_benchmark");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyConfig));
  scaffold::write_file_atomic(dir.path() / "not_a_dir", std::string_view("x"));
  const CommandResult normal = run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --base-run-dir not_a_dir"));
  EXPECT_EQ(normal.exit_code, 2) << normal.output;
  EXPECT_TRUE(contains(normal.output, "[info] problem_scale=4")) << normal.output;

  const CommandResult quiet =
      run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --base-run-dir not_a_dir -q"));
  EXPECT_EQ(quiet.exit_code, 2) << quiet.output;
  EXPECT_FALSE(contains(quiet.output, "[info]")) << quiet.output;
  EXPECT_TRUE(contains(quiet.output, "[error] invalid configuration: base_run_dir = 'not_a_dir' is unusable"))
      << quiet.output;
}

TEST(ProfileTorch, TraceCoversActiveWindow) {
  TempDir dir("cli_profile");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyConfig));

  // 3 steps per epoch: step 0 is skipped, step 1 recorded and discarded, and
  // steps 2 (the last of epoch 1) and 3 (the first of epoch 2) traced. The
  // window therefore also contains epoch 1's validation and checkpoint. -v
  // comes last on the command line.
  const CommandResult result = run_in(
      dir.path(), "PROFILE_TORCH=1 PROFILE_TORCH_WAIT=1 PROFILE_TORCH_WARMUP=1 PROFILE_TORCH_ACTIVE=2 " +
                      scaffold_command("benchmark -c cfg.yml --base-run-dir runs -v"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "[debug]")) << result.output;

  // One trace file, named after the host, in the run directory and in the log.
  const fs::path run_dir = only_run_dir(dir.path() / "runs");
  std::vector<fs::path> traces;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    if (entry.path().filename().string().rfind("torch-", 0) == 0) traces.push_back(entry.path());
  }
  ASSERT_EQ(traces.size(), 1u);
  EXPECT_TRUE(contains(traces[0].filename().string(), "-r0-N1-n1-ps4-e2-nipf15-")) << traces[0];
  EXPECT_TRUE(contains(result.output, "trace of 2 training steps")) << result.output;
  EXPECT_TRUE(contains(result.output, traces[0].string())) << result.output;

  std::ifstream stream(traces[0]);
  const nlohmann::json trace = nlohmann::json::parse(stream);
  ASSERT_TRUE(trace["traceEvents"].is_array());

  std::map<std::string, int> regions;
  std::set<std::string> profiler_steps;
  std::multiset<std::int64_t> batch_steps;
  int operators = 0;
  double window_begin_us = 0;
  double window_end_us = 0;
  for (const nlohmann::json& event : trace["traceEvents"]) {
    if (event["ph"] != "X") continue;
    for (const char* field : {"name", "cat", "ts", "dur", "pid", "tid"}) ASSERT_TRUE(event.contains(field)) << event;
    const std::string name = event["name"];
    const std::int64_t step = event["args"].value("step", std::int64_t{-1});
    if (event["cat"] == "region") ++regions[name];
    if (name == "run_training_batch") batch_steps.insert(step);
    if (event["cat"] == "profiler_step") {
      profiler_steps.insert(name);
      const double begin = event["ts"];
      const double end = begin + event["dur"].get<double>();
      window_begin_us = window_begin_us == 0 ? begin : std::min(window_begin_us, begin);
      window_end_us = std::max(window_end_us, end);
    }
    if (name.rfind("aten::", 0) == 0) {
      ++operators;
      // Operators of skipped (0) or discarded (1) steps are not in the trace.
      EXPECT_TRUE(step == 2 || step == 3) << event;
    }
  }

  // Exactly the ACTIVE steps, each with its training-batch region.
  EXPECT_EQ(profiler_steps, (std::set<std::string>{"ProfilerStep#2", "ProfilerStep#3"}));
  EXPECT_EQ(batch_steps, (std::multiset<std::int64_t>{2, 3}));
  EXPECT_GT(operators, 100);
  for (const char* name : {"train", "batch_loop", "run_training_batch", "predict", "calculate_loss", "backward",
                           "step_and_update", "evaluate", "checkpoint"}) {
    EXPECT_GT(regions[name], 0) << name;
  }
  EXPECT_EQ(regions["predict"], 2);
  EXPECT_EQ(regions["backward"], 2);
  // Warmup runs before the first training step, outside the window.
  EXPECT_EQ(regions["warmup"], 0);

  // Every event lies inside the window of the two profiler steps.
  for (const nlohmann::json& event : trace["traceEvents"]) {
    if (event["ph"] != "X") continue;
    const double begin = event["ts"];
    EXPECT_GE(begin, window_begin_us) << event;
    EXPECT_LE(begin + event["dur"].get<double>(), window_end_us + 0.01) << event;
  }
}

TEST(MlperfLog, EventsMatchTrainStats) {
  TempDir dir("cli_mllog");
  scaffold::write_file_atomic(dir.path() / "cfg.yml", std::string_view(kTinyConfig));
  const CommandResult result =
      run_in(dir.path(), scaffold_command("benchmark -c cfg.yml --base-run-dir runs --mlperf-log 1 --seed 7"));
  ASSERT_EQ(result.exit_code, 0) << result.output;

  const fs::path run_dir = only_run_dir(dir.path() / "runs");
  const std::vector<nlohmann::json> file_records = mllog_records(scaffold::read_file(run_dir / "mllog.txt"));
  const std::vector<nlohmann::json> log_records = mllog_records(result.output);
  EXPECT_EQ(file_records, log_records);

  // Keys in order, with the epoch of each epoch event.
  std::vector<std::string> keys;
  for (const nlohmann::json& record : file_records) {
    std::string key = record["key"];
    if (record["metadata"].contains("epoch_num")) {
      key += '/';
      key += std::to_string(record["metadata"]["epoch_num"].get<int>());
    }
    keys.push_back(key);
  }
  const std::vector<std::string> expected = {
      "init_start",    "submission_benchmark", "global_batch_size", "opt_name",        "opt_base_learning_rate",
      "seed",          "train_samples",        "eval_samples",      "init_stop",       "run_start",
      "epoch_start/1", "epoch_stop/1",         "eval_start/1",      "eval_accuracy/1", "eval_stop/1",
      "epoch_start/2", "epoch_stop/2",         "eval_start/2",      "eval_accuracy/2", "eval_stop/2",
      "run_stop"};
  EXPECT_EQ(keys, expected);

  // Field order, event types and values.
  std::map<std::string, nlohmann::json> first;
  std::vector<double> accuracies;
  std::int64_t previous_time_ms = 0;
  for (const nlohmann::json& record : file_records) {
    const std::string key = record["key"];
    first.emplace(key, record);
    const std::string type = record["event_type"];
    if (key.ends_with("_start")) {
      EXPECT_EQ(type, "INTERVAL_START") << record;
    } else if (key.ends_with("_stop")) {
      EXPECT_EQ(type, "INTERVAL_END") << record;
    } else {
      EXPECT_EQ(type, "POINT_IN_TIME") << record;
    }
    EXPECT_EQ(record["namespace"], "");
    EXPECT_TRUE(record["metadata"]["file"].is_string()) << record;
    EXPECT_TRUE(record["metadata"]["lineno"].is_number_integer()) << record;
    EXPECT_GE(record["time_ms"].get<std::int64_t>(), previous_time_ms) << record;
    previous_time_ms = record["time_ms"];
    if (key == "eval_accuracy") accuracies.push_back(record["value"]);
  }
  EXPECT_EQ(first["seed"]["value"], 7);
  EXPECT_EQ(first["global_batch_size"]["value"], 1);
  EXPECT_EQ(first["opt_base_learning_rate"]["value"], 0.001);
  EXPECT_EQ(first["train_samples"]["value"], 3);
  EXPECT_EQ(first["eval_samples"]["value"], 2);

  // eval_accuracy is the validation Dice of train_stats.csv, to the last bit.
  const std::vector<scaffold::EpochStats> stats = scaffold::read_train_stats(run_dir / "train_stats.csv");
  ASSERT_EQ(stats.size(), accuracies.size());
  for (std::size_t i = 0; i < stats.size(); ++i) EXPECT_EQ(accuracies[i], stats[i].val_dice) << "epoch " << i + 1;

  // target_dice 1.0 is not reached, so the run stops as aborted.
  std::ifstream result_file(run_dir / "result.json");
  const nlohmann::json result_json = nlohmann::json::parse(result_file);
  EXPECT_FALSE(result_json["converged"].get<bool>());
  EXPECT_EQ(first["run_stop"]["metadata"]["status"], "aborted");
}
