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

  // Keys the reference accepts outside its default file; listed with the
  // user-facing group in configs/benchmark_default.yml.
  std::string job_name = "benchmark";
  bool async_save = false;

  // This implementation's own key: the CPU kernels of the U-Net. "onednn"
  // calls oneDNN directly for the convolutions and runs GroupNorm + ReLU as one
  // fused kernel; "libtorch" uses LibTorch's own operations, for comparison.
  std::string conv_backend = "onednn";

  // This implementation's own key: the size in MiB of the gradient buckets that
  // data-parallel training all-reduces while the backward pass is still running
  // (the default of torch DDP's bucket_cap_mb).
  double ddp_bucket_cap_mb = 25.0;

  // This implementation's own key: 1 also writes MLPerf-style ":::MLLOG"
  // lines (run_start, epoch_start/epoch_stop, eval_accuracy, run_stop, ...)
  // to the log and to <run>/mllog.txt.
  bool mlperf_log = false;

  bool operator==(const Config&) const = default;

  // Derived values. Files may contain them (a run directory's config.yaml does),
  // but they must agree with problem_scale and unet_bottleneck_dim.
  int vol_size() const { return 1 << problem_scale; }
  int unet_layers() const { return problem_scale - unet_bottleneck_dim; }
  std::int64_t point_num() const {
    const std::int64_t v = vol_size();
    return v * v * v / 256;
  }
};

// Command-line overrides; a key missing from the map leaves the files' value.
struct ConfigOverrides {
  // Key -> value as text, parsed with the same type rules as a file value, e.g.
  // {"problem_scale", "5"}. List keys take "[2, 1, 1]", "2,1,1" or "2 1 1".
  std::map<std::string, std::string> values;
};

// Loads and merges the files in order over the defaults: each file may set any
// subset of the keys, and a later file wins over an earlier one key by key. Applies
// the overrides last, normalises the spelling of `optimizer` to "ADAM" or "RMSProp",
// then validates. Older key names are mapped to the current ones with a warning.
// Throws ConfigError naming the file, key and value.
Config load_config(const std::vector<std::filesystem::path>& files, const ConfigOverrides& overrides = {});

// Parses one YAML text like one config file; `origin` names the source in messages.
Config load_config_text(const std::string& yaml_text, const std::string& origin = "<string>");

// Checks every range rule; throws ConfigError naming the key, value and valid range.
void validate(const Config& config);

// Serialises every key in file order plus the derived values (vol_size,
// unet_layers, point_num); load_config reads the result back to an equal Config.
std::string to_yaml(const Config& config);

// All valid key names, in file order.
const std::vector<std::string>& config_keys();

// Number of volumes in the dataset and their split. Each category fills
// n_instances_used_per_fractal / n_fracts_per_vol volumes (rounded down), and
// int(total * val_split / 100) of all volumes go to validation.
struct VolumeCounts {
  std::int64_t total = 0;
  std::int64_t train = 0;
  std::int64_t validation = 0;
};
VolumeCounts volume_counts(const Config& config);

// Formats a double as Python's str(float) does: the shortest text that reads back
// to the same value, with at least one decimal ("0.15", "1.0", "1e-05", "1e+16").
// The fractal directory name var<variance_threshold> uses it.
std::string format_threshold(double value);

}  // namespace scaffold
