// The training dataset on disk: volumes and masks built from the fractal
// library, in the reference's format-5 layout, cached by config id.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/rank_share.hpp"

namespace scaffold {

inline constexpr int kDatasetFormatVersion = 5;

enum class Split { kTraining, kValidation };

// A missing, incomplete or inconsistent dataset on disk. The message names the
// file and explains how to regenerate the dataset.
class DatasetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DatasetInfo {
  std::filesystem::path dir;        // <dataset_dir>/<config_id>/<YYYYmmdd-HHMMSS>__<commit>
  std::string config_id;            // 12 hex chars
  std::vector<int> train_ids;       // volume indices, sorted
  std::vector<int> val_ids;         // volume indices, sorted
  int vol_size = 0;
  int n_classes = 0;                // n_categories + 1
};

// Compact JSON with sorted keys of the config keys that define a dataset, as
// Python's json.dumps(subset, separators=(",", ":"), sort_keys=True) prints it.
// The (dc_shard_dims, dc_num_shards) pairs are sorted by dim. Config stores
// val_split and variance_threshold as double, so an integer value prints as an
// int ("30", as for YAML `val_split: 30`) and any other value in Python's
// shortest form ("0.15"). A YAML file that writes `30.0` therefore hashes as
// "30.0" in the reference but as "30" here.
std::string dataset_config_json(const Config& config);

// First 12 hex chars of SHA-256 of dataset_config_json (the reference's config_id).
std::string dataset_config_id(const Config& config);

// Reuses the newest complete dataset under <dataset_dir>/<config_id>/ whose
// meta.yaml matches (config_id, format version, and code commit when
// dataset_reuse_enforce_commit_id is set), whose volumes_contents.csv matches
// the config and whose volume and mask headers are valid. A damaged dataset is
// skipped with a warning naming the file. Otherwise builds one in a staging
// directory and renames it into place (generating the fractal library first
// when an instance file is missing), holding the lock
// <dataset_dir>/<config_id>/.lock so that concurrent calls build it once.
// Under the lock it removes the staging directories of builds that were
// killed. Throws ConfigError for invalid dataset keys.
// With several ranks in `share`, every rank must call it. Rank 0 decides
// about reuse, holds the lock and writes the small files. All ranks generate
// the fractal library and the volumes, and every rank returns the same
// dataset. The files are the same bytes for any rank count.
DatasetInfo ensure_dataset(const Config& config, const RankShare& share = {});

// Opens an existing dataset directory: reads meta.yaml and lists the ids.
// Throws DatasetError naming the file when something is missing or
// inconsistent, such as a volume that meta.yaml's n_volumes counts but that
// neither split contains.
DatasetInfo open_dataset(const std::filesystem::path& dir);

// SHA-256 (hex) of the dataset's meta.yaml and volumes_contents.csv and of its
// training and validation id lists: ranks that opened the same dataset get the
// same value. Throws DatasetError naming a file that cannot be read.
std::string dataset_manifest_hash(const DatasetInfo& info);

std::filesystem::path volume_path(const DatasetInfo& info, Split split, int volume_index);
std::filesystem::path mask_path(const DatasetInfo& info, Split split, int volume_index);

// One sample: volume float32 [3, D, H, W], mask uint16 [D, H, W].
struct Sample {
  int volume_index = 0;
  std::vector<float> volume;
  std::vector<std::uint16_t> mask;
};

// Reads and checks one sample (dtype, shape, label range).
Sample load_sample(const DatasetInfo& info, Split split, int volume_index);

}  // namespace scaffold
