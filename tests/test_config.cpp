// Tests of configuration loading: defaults, merging, overrides, older key names,
// validation messages, derived values, YAML output and float formatting.
#include "core/config.hpp"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace scaffold {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temporary directory, removed with its contents.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = fs::temp_directory_path() /
            ("scaffold_test_config_" + std::to_string(::getpid()) + "_" + std::to_string(stamp) + "_" +
             std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path file = path_ / name;
    std::ofstream stream(file, std::ios::binary);
    stream << text;
    return file;
  }

  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Routes the default spdlog logger into a string while alive.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    auto logger = std::make_shared<spdlog::logger>("config_test", sink);
    logger->set_level(spdlog::level::debug);
    logger->set_pattern("%l: %v");
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::string text() const { return stream_.str(); }

 private:
  std::ostringstream stream_;
  std::shared_ptr<spdlog::logger> previous_;
};

// Runs `action`, which must throw ConfigError, and returns its message.
std::string config_error(const std::function<void()>& action) {
  try {
    action();
  } catch (const ConfigError& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a ConfigError, but none was thrown";
  return "";
}

std::string text_error(const std::string& yaml) {
  return config_error([&] { load_config_text(yaml, "test.yml"); });
}

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

fs::path default_config_path() { return fs::path(SCAFFOLD_SOURCE_DIR) / "configs" / "benchmark_default.yml"; }

TEST(ConfigDefaults, MatchReferenceValues) {
  const Config c;
  EXPECT_EQ(c.base_run_dir, "benchmark_runs");
  EXPECT_EQ(c.dataset_dir, "datasets");
  EXPECT_EQ(c.fract_base_dir, "fractals");
  EXPECT_EQ(c.seed, 42);
  EXPECT_EQ(c.dataloader_num_workers, 1);
  EXPECT_EQ(c.dc_num_shards, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(c.dc_shard_dims, (std::vector<int>{2, 3, 4}));
  EXPECT_EQ(c.checkpoint_interval, -1);

  EXPECT_EQ(c.n_categories, 5);
  EXPECT_EQ(c.n_instances_used_per_fractal, 145);
  EXPECT_EQ(c.problem_scale, 7);
  EXPECT_EQ(c.unet_bottleneck_dim, 3);
  EXPECT_DOUBLE_EQ(c.target_dice, 0.95);

  EXPECT_EQ(c.local_batch_size, 1);
  EXPECT_EQ(c.optimizer, "ADAM");
  EXPECT_DOUBLE_EQ(c.starting_learning_rate, 0.001);
  EXPECT_DOUBLE_EQ(c.min_learning_rate, 0.0001);
  EXPECT_EQ(c.T_0, 10);
  EXPECT_EQ(c.T_mult, 2);
  EXPECT_FALSE(c.disable_scheduler);

  EXPECT_DOUBLE_EQ(c.variance_threshold, 0.15);
  EXPECT_EQ(c.n_fracts_per_vol, 3);
  EXPECT_DOUBLE_EQ(c.val_split, 30);
  EXPECT_EQ(c.epochs, -1);
  EXPECT_FALSE(c.more_determinism);
  EXPECT_FALSE(c.datagen_from_scratch);
  EXPECT_TRUE(c.train_from_scratch);
  EXPECT_TRUE(c.torch_amp);
  EXPECT_EQ(c.framework, "torch");
  EXPECT_EQ(c.checkpoint_dir, "checkpoints");
  EXPECT_EQ(c.loss_freq, 1);
  EXPECT_DOUBLE_EQ(c.normalize, 1.0);
  EXPECT_EQ(c.group_norm_groups, 8);
  EXPECT_EQ(c.warmup_batches, 64);
  EXPECT_FALSE(c.activation_checkpointing);
  EXPECT_DOUBLE_EQ(c.ce_weight_sample_fraction, 0.1);
  EXPECT_FALSE(c.dataset_reuse_enforce_commit_id);

  EXPECT_EQ(c.job_name, "benchmark");
  EXPECT_FALSE(c.async_save);
  EXPECT_EQ(c.conv_backend, "onednn");
  EXPECT_DOUBLE_EQ(c.ddp_bucket_cap_mb, 25.0);
  EXPECT_FALSE(c.mlperf_log);

  EXPECT_NO_THROW(validate(c));
}

TEST(ConfigDefaults, DefaultFileEqualsDefaults) {
  const Config loaded = load_config({default_config_path()});
  EXPECT_EQ(loaded, Config{});
}

TEST(ConfigDefaults, DefaultFileListsEveryKeyInOrder) {
  const YAML::Node root = YAML::LoadFile(default_config_path().string());
  std::vector<std::string> file_keys;
  for (const auto& item : root) file_keys.push_back(item.first.Scalar());
  EXPECT_EQ(file_keys, config_keys());
}

TEST(ConfigDefaults, DefaultFileHasReferenceGroups) {
  std::ifstream stream(default_config_path());
  std::stringstream text;
  text << stream.rdbuf();
  const std::string content = text.str();

  const std::vector<std::string> headings = {"# External/user-facing", "# External problem specification",
                                             "# External learning rate specification",
                                             "# Internal/dev use only"};
  std::size_t previous = 0;
  for (const std::string& heading : headings) {
    const std::size_t position = content.find(heading);
    ASSERT_NE(position, std::string::npos) << heading;
    EXPECT_GT(position, previous) << heading;
    previous = position;
  }
  EXPECT_LT(content.find("# External problem specification"), content.find("\nn_categories:"));
  EXPECT_LT(content.find("# External learning rate specification"), content.find("\nlocal_batch_size:"));
  EXPECT_LT(content.find("# Internal/dev use only"), content.find("\nvariance_threshold:"));
}

TEST(ConfigDerived, ValuesAtSeveralScales) {
  struct Case {
    int scale;
    int bottleneck;
    int vol_size;
    int unet_layers;
    std::int64_t point_num;
  };
  const std::vector<Case> cases = {
      {2, 0, 4, 2, 0},                   // 4^3 / 256 rounds down to 0
      {4, 3, 16, 1, 16},                 // 4096 / 256
      {6, 3, 64, 3, 1024},               // 262144 / 256
      {7, 3, 128, 4, 8192},              // default
      {11, 6, 2048, 5, 33554432},        // official benchmark size
      {14, 3, 16384, 11, 17179869184LL}, // 2^42 / 2^8
  };
  for (const Case& test_case : cases) {
    Config c;
    c.problem_scale = test_case.scale;
    c.unet_bottleneck_dim = test_case.bottleneck;
    EXPECT_EQ(c.vol_size(), test_case.vol_size) << "scale " << test_case.scale;
    EXPECT_EQ(c.unet_layers(), test_case.unet_layers) << "scale " << test_case.scale;
    EXPECT_EQ(c.point_num(), test_case.point_num) << "scale " << test_case.scale;
  }
}

TEST(ConfigDerived, VolumeCountsOfDefaults) {
  // 145 instances round down to 144 = 48 volumes of 3, times 5 categories.
  const VolumeCounts counts = volume_counts(Config{});
  EXPECT_EQ(counts.total, 240);
  EXPECT_EQ(counts.validation, 72);
  EXPECT_EQ(counts.train, 168);
}

TEST(ConfigDerived, VolumeCountsRoundDown) {
  Config c;
  c.n_categories = 2;
  c.n_instances_used_per_fractal = 10;  // 9 used: 3 volumes per category
  c.n_fracts_per_vol = 3;
  c.val_split = 25;  // int(6 * 25 / 100) = int(1.5) = 1
  const VolumeCounts counts = volume_counts(c);
  EXPECT_EQ(counts.total, 6);
  EXPECT_EQ(counts.validation, 1);
  EXPECT_EQ(counts.train, 5);
}

TEST(ConfigLoad, MultipleFilesMergeInOrder) {
  TempDir dir;
  const fs::path base = dir.write("base.yml", "problem_scale: 5\nseed: 1\nepochs: 3\n");
  const fs::path second = dir.write("second.yml", "seed: 2\njob_name: second\n");
  const fs::path third = dir.write("third.yml", "job_name: third\n");

  const Config c = load_config({base, second, third});
  EXPECT_EQ(c.problem_scale, 5);
  EXPECT_EQ(c.epochs, 3);
  EXPECT_EQ(c.seed, 2);
  EXPECT_EQ(c.job_name, "third");
  EXPECT_EQ(c.n_categories, 5);  // untouched keys keep their defaults

  const Config reversed = load_config({third, second, base});
  EXPECT_EQ(reversed.seed, 1);
  EXPECT_EQ(reversed.job_name, "second");
}

TEST(ConfigLoad, OverridesBeatFiles) {
  TempDir dir;
  const fs::path file = dir.write("cfg.yml", "problem_scale: 5\nseed: 1\noptimizer: ADAM\n");
  ConfigOverrides overrides;
  overrides.values = {{"problem_scale", "6"},
                      {"seed", "9"},
                      {"optimizer", "rmsprop"},
                      {"starting_learning_rate", "2e-3"},
                      {"torch_amp", "false"},
                      {"base_run_dir", "runs: special"},
                      {"dc_shard_dims", "4 3 2"},
                      {"dc_num_shards", "[1, 1, 1]"}};

  const Config c = load_config({file}, overrides);
  EXPECT_EQ(c.problem_scale, 6);
  EXPECT_EQ(c.seed, 9);
  EXPECT_EQ(c.optimizer, "RMSProp");
  EXPECT_DOUBLE_EQ(c.starting_learning_rate, 0.002);
  EXPECT_FALSE(c.torch_amp);
  EXPECT_EQ(c.base_run_dir, "runs: special");
  EXPECT_EQ(c.dc_shard_dims, (std::vector<int>{4, 3, 2}));
  EXPECT_EQ(c.dc_num_shards, (std::vector<int>{1, 1, 1}));
}

TEST(ConfigLoad, OverrideNumbersIgnoreBlanks) {
  ConfigOverrides overrides;
  overrides.values = {{"epochs", " 12 "}, {"job_name", " spaced "}};
  const Config c = load_config({}, overrides);
  EXPECT_EQ(c.epochs, 12);
  EXPECT_EQ(c.job_name, " spaced ");
}

TEST(ConfigLoad, IntegralFloatScaleNeedsNoWarning) {
  LogCapture log;
  EXPECT_EQ(load_config_text("problem_scale: 6.0\n").problem_scale, 6);
  EXPECT_EQ(log.text().find("problem_scale"), std::string::npos) << log.text();
}

TEST(ConfigLoad, OverrideListWithCommas) {
  ConfigOverrides overrides;
  overrides.values = {{"dc_shard_dims", "3,2,4"}};
  EXPECT_EQ(load_config({}, overrides).dc_shard_dims, (std::vector<int>{3, 2, 4}));
}

TEST(ConfigLoad, OverrideErrors) {
  ConfigOverrides unknown;
  unknown.values = {{"problem_scal", "5"}};
  const std::string unknown_message = config_error([&] { load_config({}, unknown); });
  EXPECT_CONTAINS(unknown_message, "unknown key 'problem_scal'");
  EXPECT_CONTAINS(unknown_message, "command-line overrides");
  EXPECT_CONTAINS(unknown_message, "did you mean 'problem_scale'?");

  ConfigOverrides wrong_type;
  wrong_type.values = {{"epochs", "many"}};
  const std::string type_message = config_error([&] { load_config({}, wrong_type); });
  EXPECT_CONTAINS(type_message, "'many'");
  EXPECT_CONTAINS(type_message, "'epochs'");
  EXPECT_CONTAINS(type_message, "an integer");

  ConfigOverrides out_of_range;
  out_of_range.values = {{"problem_scale", "20"}};
  const std::string range_message = config_error([&] { load_config({}, out_of_range); });
  EXPECT_CONTAINS(range_message, "problem_scale = 20 is invalid: it must be in [2, 14]");
  EXPECT_CONTAINS(range_message, "command-line overrides");

  ConfigOverrides empty;
  empty.values = {{"seed", ""}};
  EXPECT_CONTAINS(config_error([&] { load_config({}, empty); }), "'seed' is empty");
}

TEST(ConfigLoad, ValidationErrorNamesSourceFile) {
  TempDir dir;
  const fs::path base = dir.write("base.yml", "problem_scale: 5\n");
  const fs::path bad = dir.write("bad.yml", "unet_bottleneck_dim: 5\n");
  const std::string message = config_error([&] { load_config({base, bad}); });
  EXPECT_CONTAINS(message, "unet_bottleneck_dim = 5 is invalid: it must be in [0, problem_scale - 1] = [0, 4]");
  EXPECT_CONTAINS(message, "unet_bottleneck_dim set in " + bad.string());
}

TEST(ConfigLoad, MissingFileIsNamed) {
  TempDir dir;
  const fs::path missing = dir.path() / "absent.yml";
  const std::string message = config_error([&] { load_config({missing}); });
  EXPECT_CONTAINS(message, missing.string());
  EXPECT_CONTAINS(message, "not found");
}

TEST(ConfigLoad, EmptyAndNonMappingFiles) {
  TempDir dir;
  const fs::path empty = dir.write("empty.yml", "");
  const std::string empty_message = config_error([&] { load_config({empty}); });
  EXPECT_CONTAINS(empty_message, empty.string());
  EXPECT_CONTAINS(empty_message, "is empty");

  const fs::path comments = dir.write("comments.yml", "# only a comment\n");
  EXPECT_CONTAINS(config_error([&] { load_config({comments}); }), "is empty");

  const fs::path list = dir.write("list.yml", "- seed\n- 42\n");
  const std::string list_message = config_error([&] { load_config({list}); });
  EXPECT_CONTAINS(list_message, list.string());
  EXPECT_CONTAINS(list_message, "mapping");

  const fs::path scalar = dir.write("scalar.yml", "just text\n");
  EXPECT_CONTAINS(config_error([&] { load_config({scalar}); }), "mapping");
}

TEST(ConfigLoad, SyntaxErrorNamesFileAndLine) {
  TempDir dir;
  // The third line is indented under a scalar value, which YAML forbids.
  const fs::path file = dir.write("broken.yml", "seed: 1\nepochs: 2\n  bad: 3\n");
  const std::string message = config_error([&] { load_config({file}); });
  EXPECT_CONTAINS(message, file.string());
  EXPECT_CONTAINS(message, "line 3");
}

TEST(ConfigLoad, DuplicateKeyIsRejected) {
  const std::string message = text_error("seed: 1\nseed: 2\n");
  EXPECT_CONTAINS(message, "'seed' appears more than once in test.yml");
}

TEST(ConfigLoad, UnknownKeySuggestsClosest) {
  TempDir dir;
  const fs::path file = dir.write("cfg.yml", "problem_scal: 5\n");
  const std::string message = config_error([&] { load_config({file}); });
  EXPECT_EQ(message, "unknown key 'problem_scal' in " + file.string() + "; did you mean 'problem_scale'?");

  EXPECT_CONTAINS(text_error("t_0: 5\n"), "did you mean 'T_0'?");
  EXPECT_CONTAINS(text_error("warmup_batch: 5\n"), "did you mean 'warmup_batches'?");

  // A name far from every key gets no misleading guess.
  const std::string far = text_error("xyzzy_plugh_frobnicate: 1\n");
  EXPECT_CONTAINS(far, "unknown key 'xyzzy_plugh_frobnicate' in test.yml; no valid key is close");
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
  EXPECT_CONTAINS(text_error("local_batchsize: 2\n"), "did you mean 'local_batch_size'?");
}

TEST(ConfigLoad, SeveralUnknownKeysAreAllNamed) {
  const std::string message = text_error("sed: 1\nepoch: 2\nseed: 3\n");
  EXPECT_CONTAINS(message, "'sed' (did you mean 'seed'?)");
  EXPECT_CONTAINS(message, "'epoch' (did you mean 'epochs'?)");
  EXPECT_CONTAINS(message, "test.yml");
}

TEST(ConfigLoad, WrongTypesNameKeyValueAndType) {
  const std::string string_for_int = text_error("n_categories: five\n");
  EXPECT_CONTAINS(string_for_int, "invalid value 'five' for 'n_categories' in test.yml: expected an integer");

  const std::string float_for_int = text_error("epochs: 2.5\n");
  EXPECT_EQ(float_for_int, "invalid value '2.5' for 'epochs' in test.yml: expected an integer");

  const std::string quoted = text_error("seed: \"42\"\n");
  EXPECT_CONTAINS(quoted, "'seed'");
  EXPECT_CONTAINS(quoted, "quoted string");

  const std::string bad_bool = text_error("torch_amp: maybe\n");
  EXPECT_CONTAINS(bad_bool, "invalid value 'maybe' for 'torch_amp' in test.yml: expected a boolean");

  const std::string two_for_bool = text_error("torch_amp: 2\n");
  EXPECT_CONTAINS(two_for_bool, "'torch_amp'");
  EXPECT_CONTAINS(two_for_bool, "a boolean");

  const std::string bad_double = text_error("target_dice: high\n");
  EXPECT_CONTAINS(bad_double, "invalid value 'high' for 'target_dice' in test.yml: expected a finite number");

  const std::string not_finite = text_error("target_dice: nan\n");
  EXPECT_CONTAINS(not_finite, "a finite number");

  const std::string bad_list = text_error("dc_num_shards: [1, x, 1]\n");
  EXPECT_CONTAINS(bad_list, "'dc_num_shards'");
  EXPECT_CONTAINS(bad_list, "an integer");

  const std::string scalar_for_list = text_error("dc_shard_dims: 2\n");
  EXPECT_CONTAINS(scalar_for_list, "'dc_shard_dims'");
  EXPECT_CONTAINS(scalar_for_list, "a list of integers");

  const std::string mapping_for_int = text_error("seed: {a: 1}\n");
  EXPECT_CONTAINS(mapping_for_int, "'seed'");
  EXPECT_CONTAINS(mapping_for_int, "an integer");

  const std::string too_big = text_error("epochs: 99999999999\n");
  EXPECT_CONTAINS(too_big, "'epochs'");
  EXPECT_CONTAINS(too_big, "an integer in [-2147483648, 2147483647]");

  const std::string no_value = text_error("seed:\n");
  EXPECT_CONTAINS(no_value, "'seed' in test.yml has no value");
}

TEST(ConfigLoad, ListsForScalarsAreSweeps) {
  const std::string message = text_error("problem_scale: [5, 6]\nseed: [1, 2]\nepochs: 3\n");
  EXPECT_CONTAINS(message, "parameter sweeps are not supported");
  EXPECT_CONTAINS(message, "'problem_scale'");
  EXPECT_CONTAINS(message, "'seed'");
  EXPECT_EQ(message.find("'epochs'"), std::string::npos) << message;
}

TEST(ConfigLoad, FractionalProblemScaleIsFloored) {
  LogCapture log;
  const Config c = load_config_text("problem_scale: 6.7\n", "test.yml");
  EXPECT_EQ(c.problem_scale, 6);
  EXPECT_CONTAINS(log.text(), "warning: problem_scale = 6.7 in test.yml is not an integer; using 6");
}

TEST(ConfigLoad, BooleanSpellings) {
  struct Case {
    std::string text;
    bool value;
  };
  const std::vector<Case> cases = {{"0", false}, {"1", true},     {"true", true},
                                   {"false", false}, {"True", true}, {"FALSE", false}};
  for (const Case& test_case : cases) {
    const Config c = load_config_text("torch_amp: " + test_case.text + "\n");
    EXPECT_EQ(c.torch_amp, test_case.value) << test_case.text;
  }
}

TEST(ConfigLoad, NumberSpellings) {
  const Config c = load_config_text("min_learning_rate: .00005\nstarting_learning_rate: 1e-3\nval_split: 25\n"
                                    "seed: +7\nnormalize: 2.5E0\n");
  EXPECT_DOUBLE_EQ(c.min_learning_rate, 0.00005);
  EXPECT_DOUBLE_EQ(c.starting_learning_rate, 0.001);
  EXPECT_DOUBLE_EQ(c.val_split, 25.0);
  EXPECT_EQ(c.seed, 7);
  EXPECT_DOUBLE_EQ(c.normalize, 2.5);
}

TEST(ConfigLoad, OptimizerSpellingIsNormalised) {
  EXPECT_EQ(load_config_text("optimizer: adam\n").optimizer, "ADAM");
  EXPECT_EQ(load_config_text("optimizer: Adam\n").optimizer, "ADAM");
  EXPECT_EQ(load_config_text("optimizer: RMSPROP\n").optimizer, "RMSProp");
  EXPECT_EQ(load_config_text("optimizer: rmsprop\n").optimizer, "RMSProp");

  const std::string message = text_error("optimizer: SGD\n");
  EXPECT_CONTAINS(message, "optimizer = 'SGD' is invalid: it must be ADAM or RMSProp");
}

TEST(ConfigLegacy, OldNamesMapToNewOnes) {
  LogCapture log;
  const Config c = load_config_text("batch_size: 4\nlearning_rate: 0.005\n", "old.yml");
  EXPECT_EQ(c.local_batch_size, 4);
  EXPECT_DOUBLE_EQ(c.starting_learning_rate, 0.005);

  const std::string warnings = log.text();
  EXPECT_CONTAINS(warnings, "'batch_size' in old.yml is an older key name; reading it as 'local_batch_size'");
  EXPECT_CONTAINS(warnings, "'learning_rate' in old.yml is an older key name; reading it as "
                            "'starting_learning_rate'");
}

TEST(ConfigLegacy, ScalarShardingKeysBecomeLists) {
  LogCapture log;
  const Config both = load_config_text("num_shards: 1\nshard_dim: 3\n");
  EXPECT_EQ(both.dc_num_shards, (std::vector<int>{1}));
  EXPECT_EQ(both.dc_shard_dims, (std::vector<int>{3}));

  // A lone num_shards shards the depth axis; a lone shard_dim gets one shard.
  const Config shards_only = load_config_text("num_shards: 1\n");
  EXPECT_EQ(shards_only.dc_num_shards, (std::vector<int>{1}));
  EXPECT_EQ(shards_only.dc_shard_dims, (std::vector<int>{2}));

  const Config dim_only = load_config_text("shard_dim: 4\n");
  EXPECT_EQ(dim_only.dc_num_shards, (std::vector<int>{1}));
  EXPECT_EQ(dim_only.dc_shard_dims, (std::vector<int>{4}));

  EXPECT_CONTAINS(log.text(), "'num_shards'");
  EXPECT_CONTAINS(log.text(), "'dc_num_shards'");

  const std::string sharded = text_error("num_shards: 2\nshard_dim: 2\n");
  EXPECT_CONTAINS(sharded, "spatial sharding");
  EXPECT_CONTAINS(sharded, "[1, 1, 1]");
}

TEST(ConfigLegacy, OldAndNewNameTogetherIsAnError) {
  const std::string message = text_error("batch_size: 1\nlocal_batch_size: 2\n");
  EXPECT_CONTAINS(message, "test.yml sets both 'local_batch_size' and its older name 'batch_size'");

  EXPECT_CONTAINS(text_error("learning_rate: 0.1\nstarting_learning_rate: 0.1\n"), "'learning_rate'");
}

TEST(ConfigLegacy, LaterFileWinsAcrossNames) {
  TempDir dir;
  const fs::path old_file = dir.write("old.yml", "batch_size: 3\n");
  const fs::path new_file = dir.write("new.yml", "local_batch_size: 2\n");
  EXPECT_EQ(load_config({old_file, new_file}).local_batch_size, 2);
  EXPECT_EQ(load_config({new_file, old_file}).local_batch_size, 3);
}

TEST(ConfigLegacy, DistMustBeTrue) {
  LogCapture log;
  EXPECT_NO_THROW(load_config_text("dist: 1\n", "test.yml"));
  EXPECT_NO_THROW(load_config_text("dist: true\n", "test.yml"));
  EXPECT_CONTAINS(log.text(), "'dist' in test.yml is ignored");

  const std::string message = text_error("dist: 0\n");
  EXPECT_CONTAINS(message, "dist = 0 in test.yml is invalid");
  EXPECT_CONTAINS(message, "always runs distributed");
  EXPECT_CONTAINS(message, "delete the line");

  EXPECT_CONTAINS(text_error("dist: false\n"), "dist = false in test.yml is invalid");
}

TEST(ConfigLegacy, WarmupEpochsIsIgnoredWithWarning) {
  LogCapture log;
  const Config c = load_config_text("warmup_epochs: 3\n", "test.yml");
  EXPECT_EQ(c, Config{});
  EXPECT_CONTAINS(log.text(), "'warmup_epochs' in test.yml is ignored; set warmup_batches instead");
}

TEST(ConfigLegacy, OlderReadmeConfigLoads) {
  TempDir dir;
  const fs::path file = dir.write("readme.yml",
                                  "problem_scale: 6\n"
                                  "batch_size: 1\n"
                                  "val_split: 25\n"
                                  "epochs: 100\n"
                                  "learning_rate: .0001\n"
                                  "disable_scheduler: 1\n"
                                  "dist: 1\n"
                                  "torch_amp: 1\n"
                                  "checkpoint_interval: 1\n"
                                  "loss_freq: 1\n");
  LogCapture log;
  const Config c = load_config({file});
  EXPECT_EQ(c.problem_scale, 6);
  EXPECT_EQ(c.local_batch_size, 1);
  EXPECT_DOUBLE_EQ(c.val_split, 25);
  EXPECT_EQ(c.epochs, 100);
  EXPECT_DOUBLE_EQ(c.starting_learning_rate, 0.0001);
  EXPECT_DOUBLE_EQ(c.min_learning_rate, 0.0001);
  EXPECT_TRUE(c.disable_scheduler);
  EXPECT_TRUE(c.torch_amp);
  EXPECT_EQ(c.checkpoint_interval, 1);
  EXPECT_EQ(c.loss_freq, 1);
  EXPECT_EQ(c.vol_size(), 64);
  EXPECT_EQ(c.unet_layers(), 3);
}

TEST(ConfigSavedKeys, RunDirectoryKeysAreAccepted) {
  const std::string saved =
      "problem_scale: 6\n"
      "command: benchmark\n"
      "config: [a.yml, b.yml]\n"
      "verbose: 0\n"
      "restart: false\n"
      "run_dir: /tmp/run\n"
      "run_iter: 0\n"
      "benchmark_run_dir: /tmp/run\n"
      "unet_layers: 3\n"
      "vol_size: 64\n"
      "point_num: 1024\n"
      "scheduler_metadata: {scheduler: flux, nodes: 1}\n"
      "machine_name: node01\n"
      "datagen_batch_size: 10000\n"
      "scale: 1\n"
      "dc_total_shards: 1\n";
  const Config c = load_config_text(saved);
  Config expected;
  expected.problem_scale = 6;
  EXPECT_EQ(c, expected);
}

TEST(ConfigSavedKeys, ScaleMustBeOne) {
  const std::string message = text_error("scale: 2\n");
  EXPECT_CONTAINS(message, "scale = 2 in test.yml is invalid: it must be 1");
}

TEST(ConfigSavedKeys, DerivedValuesMustMatch) {
  const std::string vol_size = text_error("problem_scale: 7\nvol_size: 64\n");
  EXPECT_CONTAINS(vol_size, "vol_size = 64 in test.yml does not match problem_scale = 7");
  EXPECT_CONTAINS(vol_size, "2^problem_scale = 2^7 = 128");

  // The oldest reference computed one more level: problem_scale - unet_bottleneck_dim + 1.
  const std::string layers = text_error("problem_scale: 7\nunet_bottleneck_dim: 3\nunet_layers: 5\n");
  EXPECT_CONTAINS(layers, "unet_layers = 5 in test.yml does not match problem_scale = 7 and unet_bottleneck_dim = 3");
  EXPECT_CONTAINS(layers, "7 - 3 = 4");

  const std::string points = text_error("problem_scale: 5\npoint_num: 8192\n");
  EXPECT_CONTAINS(points, "point_num = 8192 in test.yml does not match problem_scale = 5");
  EXPECT_CONTAINS(points, "32^3 / 256 = 128");

  const std::string not_integer = text_error("vol_size: big\n");
  EXPECT_CONTAINS(not_integer, "invalid value 'big' for 'vol_size' in test.yml: expected an integer");
}

TEST(ConfigSavedKeys, DerivedValuesFollowLaterFilesAndOverrides) {
  TempDir dir;
  const fs::path saved = dir.write("config.yaml", "problem_scale: 7\nvol_size: 128\nunet_layers: 4\n");
  const fs::path smaller = dir.write("smaller.yml", "problem_scale: 5\n");
  EXPECT_EQ(load_config({saved, smaller}).problem_scale, 5);

  ConfigOverrides overrides;
  overrides.values = {{"problem_scale", "6"}};
  EXPECT_EQ(load_config({saved}, overrides).problem_scale, 6);
}

TEST(ConfigSavedKeys, DerivedKeysAreNotOverrides) {
  ConfigOverrides overrides;
  overrides.values = {{"vol_size", "64"}};
  EXPECT_CONTAINS(config_error([&] { load_config({}, overrides); }), "unknown key 'vol_size'");
}

// One rule per row: the YAML that breaks it and the message parts that must appear.
struct ValidationCase {
  std::string yaml;
  std::vector<std::string> expected_parts;
};

TEST(ConfigValidate, EachRuleNamesKeyValueAndRange) {
  const std::vector<ValidationCase> cases = {
      {"problem_scale: 1\n", {"problem_scale = 1 is invalid: it must be in [2, 14]"}},
      {"problem_scale: 15\n", {"problem_scale = 15 is invalid: it must be in [2, 14]"}},
      {"problem_scale: 4\nunet_bottleneck_dim: 4\n",
       {"unet_bottleneck_dim = 4 is invalid: it must be in [0, problem_scale - 1] = [0, 3]"}},
      {"unet_bottleneck_dim: -1\n", {"unet_bottleneck_dim = -1 is invalid", "[0, 6]"}},
      {"n_categories: 0\n", {"n_categories = 0 is invalid: it must be at least 1"}},
      {"n_fracts_per_vol: 0\n", {"n_fracts_per_vol = 0 is invalid: it must be at least 1"}},
      {"n_instances_used_per_fractal: 2\n",
       {"n_instances_used_per_fractal = 2 is invalid: it must be at least n_fracts_per_vol = 3"}},
      {"val_split: 100\n", {"val_split = 100 is invalid: it must be in [0, 100)"}},
      {"val_split: -1\n", {"val_split = -1 is invalid: it must be in [0, 100)"}},
      {"group_norm_groups: 0\n", {"group_norm_groups = 0 is invalid: it must divide 64"}},
      {"group_norm_groups: 12\n", {"group_norm_groups = 12 is invalid: it must divide 64", "1, 2, 4, 8, 16, 32 or 64"}},
      {"group_norm_groups: 128\n", {"group_norm_groups = 128 is invalid"}},
      {"local_batch_size: 0\n", {"local_batch_size = 0 is invalid: it must be at least 1"}},
      {"starting_learning_rate: 0\n", {"starting_learning_rate = 0 is invalid: it must be greater than 0"}},
      {"min_learning_rate: 0.01\n",
       {"min_learning_rate = 0.01 is invalid: it must be in [0, starting_learning_rate] = [0, 0.001]"}},
      {"min_learning_rate: -0.1\n", {"min_learning_rate = -0.1 is invalid"}},
      {"T_0: 0\n", {"T_0 = 0 is invalid: it must be at least 1"}},
      {"T_mult: 0\n", {"T_mult = 0 is invalid: it must be at least 1"}},
      {"variance_threshold: -0.5\n", {"variance_threshold = -0.5 is invalid: it must be at least 0"}},
      {"epochs: 0\n", {"epochs = 0 is invalid: it must be -1 (no limit) or at least 1"}},
      {"epochs: -2\n", {"epochs = -2 is invalid"}},
      {"checkpoint_interval: 0\n", {"checkpoint_interval = 0 is invalid: it must be -1", "or at least 1"}},
      {"framework: jax\n", {"framework = 'jax' is invalid: it must be 'torch'"}},
      {"normalize: 0\n", {"normalize = 0 is invalid: it must be greater than 0"}},
      {"warmup_batches: -1\n", {"warmup_batches = -1 is invalid: it must be at least 0"}},
      {"ce_weight_sample_fraction: 0\n", {"ce_weight_sample_fraction = 0 is invalid: it must be in (0, 1]"}},
      {"ce_weight_sample_fraction: 1.5\n", {"ce_weight_sample_fraction = 1.5 is invalid"}},
      {"target_dice: 0\n", {"target_dice = 0 is invalid: it must be in (0, 1]"}},
      {"target_dice: 1.01\n", {"target_dice = 1.01 is invalid"}},
      {"dataloader_num_workers: -1\n", {"dataloader_num_workers = -1 is invalid: it must be at least 0"}},
      {"loss_freq: 0\n", {"loss_freq = 0 is invalid: it must be at least 1"}},
      {"seed: -5\n", {"seed = -5 is invalid: it must be at least 0"}},
      {"ddp_bucket_cap_mb: 0\n", {"ddp_bucket_cap_mb = 0 is invalid: it must be in (0, 4096] MiB"}},
      {"ddp_bucket_cap_mb: 5000\n", {"ddp_bucket_cap_mb = 5000 is invalid"}},
      {"conv_backend: cuda\n", {"conv_backend = 'cuda' is invalid: it must be 'onednn' or 'libtorch'"}},
      {"dc_num_shards: [1, 1]\n",
       {"dc_num_shards = [1, 1] and dc_shard_dims = [2, 3, 4] are invalid", "same length"}},
      {"dc_num_shards: []\ndc_shard_dims: []\n", {"dc_num_shards = [] and dc_shard_dims = [] are invalid"}},
      {"dc_shard_dims: [1, 2, 3]\n", {"dc_shard_dims = [1, 2, 3] is invalid: every entry must be 2, 3 or 4"}},
      {"dc_shard_dims: [2, 2, 4]\n", {"dc_shard_dims = [2, 2, 4] is invalid: dimension 2 appears twice"}},
      {"dc_num_shards: [0, 1, 1]\n", {"dc_num_shards = [0, 1, 1] is invalid: every shard count must be at least 1"}},
      {"dc_num_shards: [2, 1, 1]\n",
       {"dc_num_shards = [2, 1, 1] asks for spatial sharding (2 shards per volume), which is not implemented",
        "use dc_num_shards: [1, 1, 1]"}},
      // 1 category, 3 instances, 3 per volume: 1 volume, int(1 * 10 / 100) = 0 for validation.
      {"n_categories: 1\nn_instances_used_per_fractal: 3\nval_split: 10\n",
       {"val_split = 10 is invalid: it gives no validation volume", "int(1 * 10 / 100) = 0 for the 1 volume that",
        "n_categories = 1"}},
  };

  for (const ValidationCase& test_case : cases) {
    const std::string message = text_error(test_case.yaml);
    for (const std::string& part : test_case.expected_parts) {
      EXPECT_CONTAINS(message, part) << "\nfor YAML:\n" << test_case.yaml;
    }
    // The source of the offending value is named too.
    EXPECT_CONTAINS(message, "set in test.yml") << "\nfor YAML:\n" << test_case.yaml;
  }
}

TEST(ConfigValidate, BoundaryValuesAreAccepted) {
  const std::vector<std::string> valid = {
      "problem_scale: 2\nunet_bottleneck_dim: 1\n",
      "problem_scale: 14\nunet_bottleneck_dim: 13\n",
      "unet_bottleneck_dim: 0\n",
      "val_split: 0\n",
      "val_split: 99.5\n",
      "group_norm_groups: 1\n",
      "group_norm_groups: 64\n",
      "min_learning_rate: 0\n",
      "min_learning_rate: 0.001\n",
      "epochs: 1\n",
      "checkpoint_interval: 1\n",
      "warmup_batches: 0\n",
      "dataloader_num_workers: 0\n",
      "ce_weight_sample_fraction: 1\n",
      "target_dice: 1\n",
      "dc_num_shards: [1]\ndc_shard_dims: [4]\n",
      "dc_shard_dims: [4, 2, 3]\n",
      // 1 volume with no validation trains on that volume alone.
      "n_categories: 1\nn_instances_used_per_fractal: 3\nval_split: 0\n",
  };
  for (const std::string& yaml : valid) {
    EXPECT_NO_THROW(load_config_text(yaml)) << yaml;
  }
}

TEST(ConfigValidate, DirectCallReportsRule) {
  Config c;
  c.problem_scale = 4;
  c.unet_bottleneck_dim = 4;
  const std::string message = config_error([&] { validate(c); });
  EXPECT_EQ(message,
            "unet_bottleneck_dim = 4 is invalid: it must be in [0, problem_scale - 1] = [0, 3] so that the U-Net "
            "has at least one level");
}

TEST(ConfigYaml, RoundTripOfDefaults) {
  const Config defaults;
  EXPECT_EQ(load_config_text(to_yaml(defaults)), defaults);
}

TEST(ConfigYaml, RoundTripOfChangedValues) {
  Config c;
  c.base_run_dir = "runs: \"quoted\" # not a comment";
  c.dataset_dir = "/data/sets with space";
  c.job_name = "123";
  c.seed = 1234567890123LL;
  c.problem_scale = 5;
  c.unet_bottleneck_dim = 2;
  c.starting_learning_rate = 1e-05 * 3;  // not exactly representable
  c.min_learning_rate = 1e-06;
  c.variance_threshold = 0.1 + 0.2;
  c.val_split = 12.5;
  c.optimizer = "RMSProp";
  c.dc_shard_dims = {4, 2, 3};
  c.torch_amp = false;
  c.async_save = true;
  c.mlperf_log = true;
  c.epochs = 17;
  ASSERT_NO_THROW(validate(c));

  const std::string yaml = to_yaml(c);
  EXPECT_EQ(load_config_text(yaml), c) << yaml;

  // Through a file as well, which is how a run directory's config.yaml is read back.
  TempDir dir;
  EXPECT_EQ(load_config({dir.write("config.yaml", yaml)}), c) << yaml;
}

TEST(ConfigYaml, ListsKeysInOrderWithDerivedValues) {
  const YAML::Node root = YAML::Load(to_yaml(Config{}));
  std::vector<std::string> keys;
  for (const auto& item : root) keys.push_back(item.first.Scalar());

  std::vector<std::string> expected = config_keys();
  expected.insert(expected.end(), {"vol_size", "unet_layers", "point_num"});
  EXPECT_EQ(keys, expected);
  EXPECT_EQ(root["vol_size"].as<int>(), 128);
  EXPECT_EQ(root["unet_layers"].as<int>(), 4);
  EXPECT_EQ(root["point_num"].as<std::int64_t>(), 8192);
}

TEST(ConfigYaml, FloatsAreReadableAsYamlFloats) {
  // "1e-05" is a string to YAML 1.1 readers; the output must carry a decimal point.
  Config c;
  c.min_learning_rate = 1e-05;
  const std::string yaml = to_yaml(c);
  EXPECT_CONTAINS(yaml, "min_learning_rate: 1.0e-05\n");
  EXPECT_CONTAINS(yaml, "variance_threshold: 0.15\n");
  EXPECT_CONTAINS(yaml, "val_split: 30.0\n");
}

TEST(FormatThreshold, MatchesPythonStr) {
  // Expected texts are what Python 3 prints for str(float(x)).
  const std::vector<std::pair<double, std::string>> cases = {
      {0.15, "0.15"},
      {1.0, "1.0"},
      {1e-05, "1e-05"},
      {0.0001, "0.0001"},
      {0.00012, "0.00012"},
      {1.5e-07, "1.5e-07"},
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {-2.5, "-2.5"},
      {123.456, "123.456"},
      {0.1 + 0.2, "0.30000000000000004"},
      {1e15, "1000000000000000.0"},
      {1e16, "1e+16"},
      {1.5e16, "1.5e+16"},
      {1e22, "1e+22"},
      {1e100, "1e+100"},
      {2.0 / 3.0, "0.6666666666666666"},
      {30.0, "30.0"},
  };
  for (const auto& [value, expected] : cases) {
    EXPECT_EQ(format_threshold(value), expected) << expected;
  }
}

}  // namespace
}  // namespace scaffold

TEST(ConfigValidation, JobNameMustBeAFileName) {
  using scaffold::Config;
  using scaffold::ConfigError;
  using scaffold::validate;
  for (const char* name : {"", "a/b", "../escaped", ".", ".."}) {
    Config config;
    config.job_name = name;
    try {
      validate(config);
      ADD_FAILURE() << "job_name '" << name << "' was accepted";
    } catch (const ConfigError& error) {
      EXPECT_NE(std::string(error.what()).find("job_name"), std::string::npos) << error.what();
    }
  }
  Config valid;
  valid.job_name = "scale7-run_2";
  EXPECT_NO_THROW(validate(valid));
}
