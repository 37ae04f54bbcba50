// The training dataset on disk: volumes and masks built from the fractal
// library, in the reference's format-5 layout, cached by config id.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace scaffold {

inline constexpr int kDatasetFormatVersion = 5;

enum class Split { kTraining, kValidation };

struct DatasetInfo {
  std::filesystem::path dir;        // <dataset_dir>/<config_id>/<YYYYmmdd-HHMMSS>__<commit>
  std::string config_id;            // 12 hex chars
  std::vector<int> train_ids;       // volume indices, sorted
  std::vector<int> val_ids;         // volume indices, sorted
  int vol_size = 0;
  int n_classes = 0;                // n_categories + 1
};

// First 12 hex chars of SHA-256 of the compact, sorted-key JSON of the dataset
// subset of the config (the reference's config_id).
std::string dataset_config_id(const Config& config);

// Reuses a matching dataset, or builds one (generating the fractal library
// first when it is missing). Returns its description.
DatasetInfo ensure_dataset(const Config& config);

// Opens an existing dataset directory (reads meta.yaml, lists ids); throws naming
// the file when something is missing or inconsistent.
DatasetInfo open_dataset(const std::filesystem::path& dir);

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
