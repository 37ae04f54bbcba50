// Benchmark configuration: the reference's YAML keys, their defaults, validation,
// merging of several files, command-line overrides and derived values.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace scaffold {

// A user error in a configuration file or override; the message names the key,
// the value, the valid range and the file when known.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Config {
  // External/user-facing.
  std::string base_run_dir = "benchmark_runs";
  std::string dataset_dir = "datasets";
  std::string fract_base_dir = "fractals";
  std::int64_t seed = 42;
  int dataloader_num_workers = 1;
  std::vector<int> dc_num_shards = {1, 1, 1};
  std::vector<int> dc_shard_dims = {2, 3, 4};
  int checkpoint_interval = -1;

  // External problem specification.
  int n_categories = 5;
  int n_instances_used_per_fractal = 145;
  int problem_scale = 7;
  int unet_bottleneck_dim = 3;
  double target_dice = 0.95;

  // External learning-rate specification.
  int local_batch_size = 1;
  std::string optimizer = "ADAM";  // ADAM or RMSProp
  double starting_learning_rate = 0.001;
  double min_learning_rate = 0.0001;
  int T_0 = 10;
  int T_mult = 2;
  bool disable_scheduler = false;

  // Internal/dev use only.
  double variance_threshold = 0.15;
  int n_fracts_per_vol = 3;
  double val_split = 30;  // percent of volumes in validation, in [0, 100)
  int epochs = -1;        // -1: no cap
  bool more_determinism = false;
  bool datagen_from_scratch = false;
  bool train_from_scratch = true;
  bool torch_amp = true;
  std::string framework = "torch";
  std::string checkpoint_dir = "checkpoints";
  int loss_freq = 1;
  double normalize = 1.0;
  int group_norm_groups = 8;
  int warmup_batches = 64;
  bool activation_checkpointing = false;
  double ce_weight_sample_fraction = 0.1;
  bool dataset_reuse_enforce_commit_id = false;

  // Other accepted keys.
  std::string job_name = "benchmark";
  bool async_save = false;

  // Derived after loading; never read from files.
  int vol_size() const { return 1 << problem_scale; }
  int unet_layers() const { return problem_scale - unet_bottleneck_dim; }
  std::int64_t point_num() const {
    const std::int64_t v = vol_size();
    return v * v * v / 256;
  }
};

// Command-line overrides; an unset optional leaves the file's value.
struct ConfigOverrides {
  std::map<std::string, std::string> values;  // key -> value as text, e.g. {"problem_scale", "5"}
};

// Loads and merges the files in order: the first is complete or partial over the
// defaults, the later ones override it key by key. Applies the overrides last,
// then validates. Throws ConfigError.
Config load_config(const std::vector<std::filesystem::path>& files, const ConfigOverrides& overrides = {});

// Parses one YAML text (for tests); `origin` names the source in messages.
Config load_config_text(const std::string& yaml_text, const std::string& origin = "<string>");

// Checks every range rule; throws ConfigError naming the key, value and valid range.
void validate(const Config& config);

// Serialises every key plus the derived values (vol_size, unet_layers, point_num).
std::string to_yaml(const Config& config);

// All valid key names, in file order.
const std::vector<std::string>& config_keys();

}  // namespace scaffold
