#include "dataset/dataset.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>
#include <optional>
#include <random>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "core/atomic_file.hpp"
#include "core/fault_injection.hpp"
#include "core/file_lock.hpp"
#include "core/hash.hpp"
#include "core/npy.hpp"
#include "core/trace.hpp"
#include "dataset/contents.hpp"
#include "dataset/render.hpp"
#include "fractal/library.hpp"
#include "scaffold/version.hpp"

namespace scaffold {

namespace fs = std::filesystem;

namespace {

// The reference's INCLUDE_KEYS, in its order.
const std::vector<std::string> kIncludeKeys = {
    "dataset_format_version", "n_categories",     "n_instances_used_per_fractal",
    "problem_scale",          "seed",             "variance_threshold",
    "n_fracts_per_vol",       "val_split",        "dc_num_shards",
    "dc_shard_dims"};

// Staging directories untouched for this long belong to a dead writer.
constexpr auto kStaleStagingAge = std::chrono::hours(24);

// Lock file in <dataset_dir>/<config_id>/, held while a dataset is built.
constexpr const char* kLockFileName = ".lock";

// Python's json.dumps prints an int as "30" and a float as "30.0"; Config keeps
// these keys as double, so integer values are taken to have been ints.
nlohmann::json python_number(double value) {
  if (std::isfinite(value) && value == std::floor(value) && std::abs(value) < 0x1.0p53) {
    return static_cast<std::int64_t>(value);
  }
  return value;
}

// The dataset-defining keys; `sort_shards` orders the (dim, shards) pairs by dim
// as the hash requires, otherwise they keep the config's order.
nlohmann::json config_subset(const Config& config, bool sort_shards) {
  std::vector<int> dims = config.dc_shard_dims;
  std::vector<int> shards = config.dc_num_shards;
  if (sort_shards && dims.size() == shards.size()) {
    std::vector<std::pair<int, int>> pairs;
    for (std::size_t i = 0; i < dims.size(); ++i) pairs.emplace_back(dims[i], shards[i]);
    std::stable_sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (std::size_t i = 0; i < pairs.size(); ++i) std::tie(dims[i], shards[i]) = pairs[i];
  }

  nlohmann::json subset;  // std::map keys: sorted bytewise, as sort_keys sorts ASCII keys
  subset["dataset_format_version"] = kDatasetFormatVersion;
  subset["n_categories"] = config.n_categories;
  subset["n_instances_used_per_fractal"] = config.n_instances_used_per_fractal;
  subset["problem_scale"] = config.problem_scale;
  subset["seed"] = config.seed;
  subset["variance_threshold"] = python_number(config.variance_threshold);
  subset["n_fracts_per_vol"] = config.n_fracts_per_vol;
  subset["val_split"] = python_number(config.val_split);
  subset["dc_num_shards"] = shards;
  subset["dc_shard_dims"] = dims;
  return subset;
}

struct UtcTime {
  std::string directory_stamp;  // YYYYmmdd-HHMMSS
  std::string iso;              // YYYY-mm-ddTHH:MM:SSZ
};

UtcTime utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char stamp[32];
  char iso[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &utc);
  std::strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return {stamp, iso};
}

std::string random_hex8() {
  std::random_device device;
  return fmt::format("{:08x}", static_cast<std::uint32_t>(device()));
}

std::string yaml_list(const std::vector<int>& values) { return fmt::format("[{}]", fmt::join(values, ", ")); }

// meta.yaml as text: strings are double-quoted so a hex id made of digits stays
// a string, and numbers use the JSON spelling of the hashed subset.
std::string meta_yaml_text(const Config& config, const std::string& config_id, const VolumePlan& plan,
                           const std::string& created_at) {
  std::string text;
  text += fmt::format("config_id: \"{}\"\n", config_id);
  text += fmt::format("dataset_format_version: {}\n", kDatasetFormatVersion);
  text += "config_subset:\n";
  const nlohmann::json subset = config_subset(config, false);
  for (const auto& [key, value] : subset.items()) {
    text += fmt::format("  {}: {}\n", key, value.dump());
  }
  text += "include_keys:\n";
  for (const std::string& key : kIncludeKeys) text += fmt::format("  - {}\n", key);
  text += fmt::format("code_commit: \"{}\"\n", kGitCommit);
  text += fmt::format("created_at: \"{}\"\n", created_at);
  text += fmt::format("n_volumes: {}\n", plan.n_volumes());
  text += fmt::format("n_train: {}\n", plan.train_ids.size());
  text += fmt::format("n_val: {}\n", plan.val_ids.size());
  text += fmt::format("vol_size: {}\n", config.vol_size());
  return text;
}

YAML::Node read_meta(const fs::path& dir) {
  const fs::path path = dir / "meta.yaml";
  if (!fs::is_regular_file(path)) {
    throw DatasetError(fmt::format("dataset {} has no meta.yaml, so it is incomplete or not a dataset; delete the "
                                   "directory and run the benchmark again to regenerate it",
                                   dir.string()));
  }
  try {
    YAML::Node meta = YAML::LoadFile(path.string());
    if (!meta.IsMap()) throw DatasetError(fmt::format("{} is not a YAML mapping; delete the dataset directory {} "
                                                      "and run the benchmark again to regenerate it",
                                                      path.string(), dir.string()));
    return meta;
  } catch (const YAML::Exception& error) {
    throw DatasetError(fmt::format("cannot parse {}: {}; delete the dataset directory {} and run the benchmark "
                                   "again to regenerate it",
                                   path.string(), error.what(), dir.string()));
  }
}

template <typename T>
T meta_value(const YAML::Node& node, const std::string& key, const fs::path& meta_path) {
  const YAML::Node value = node[key];
  if (!value) throw DatasetError(fmt::format("{} has no key '{}'; the dataset is incomplete, delete its directory and "
                                             "run the benchmark again",
                                             meta_path.string(), key));
  try {
    return value.as<T>();
  } catch (const YAML::Exception&) {
    throw DatasetError(fmt::format("{}: key '{}' has an invalid value '{}'; delete the dataset directory and run the "
                                   "benchmark again",
                                   meta_path.string(), key, YAML::Dump(value)));
  }
}

// Reason a dataset directory cannot be reused. `broken` marks a dataset made for
// this config with a damaged or missing file, which is worth a warning.
// Otherwise the dataset belongs to another config, version or commit.
struct ReuseDefect {
  std::string reason;
  bool broken = false;
};

// Returns why `dir` cannot be reused for `config`, or nothing when it can. Checks
// meta.yaml, volumes_contents.csv and the header and size of every volume and
// mask, but not the data itself.
std::optional<ReuseDefect> reuse_defect(const fs::path& dir, const Config& config, const std::string& config_id,
                                        const VolumePlan& plan) {
  YAML::Node meta;
  try {
    meta = read_meta(dir);
  } catch (const DatasetError& error) {
    return ReuseDefect{error.what(), true};
  }
  const fs::path meta_path = dir / "meta.yaml";

  try {
    if (meta_value<std::string>(meta, "config_id", meta_path) != config_id) {
      return ReuseDefect{"its config_id differs", false};
    }
    const int version = meta_value<int>(meta, "dataset_format_version", meta_path);
    if (version != kDatasetFormatVersion) return ReuseDefect{fmt::format("it has format version {}", version), false};
    if (config.dataset_reuse_enforce_commit_id) {
      const std::string commit = meta_value<std::string>(meta, "code_commit", meta_path);
      if (commit != kGitCommit) {
        return ReuseDefect{fmt::format("it was made by commit {}, not {} (dataset_reuse_enforce_commit_id is set)",
                                       commit, kGitCommit),
                           false};
      }
    }
  } catch (const DatasetError& error) {
    return ReuseDefect{error.what(), true};
  }

  const fs::path contents = dir / "volumes_contents.csv";
  try {
    if (read_file(contents) != volumes_contents_csv(plan)) {
      return ReuseDefect{contents.string() + " does not list the volumes that this config defines", true};
    }
  } catch (const IoError& error) {
    return ReuseDefect{error.what(), true};
  }

  const std::int64_t g = config.vol_size();
  for (int v = 0; v < plan.n_volumes(); ++v) {
    const bool validation = std::binary_search(plan.val_ids.begin(), plan.val_ids.end(), v);
    try {
      read_npy_header_checked(volume_file(dir, validation, v), DType::kFloat32, {3, g, g, g});
      read_npy_header_checked(mask_file(dir, validation, v), DType::kUInt16, {g, g, g});
    } catch (const NpyError& error) {
      return ReuseDefect{error.what(), true};
    } catch (const IoError& error) {
      return ReuseDefect{error.what(), true};
    }
  }
  return std::nullopt;
}

// The newest reusable dataset under `root`, skipping staging directories.
std::optional<fs::path> find_reusable_dataset(const fs::path& root, const Config& config, const std::string& config_id,
                                              const VolumePlan& plan) {
  if (!fs::is_directory(root)) return std::nullopt;

  std::vector<fs::path> candidates;
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory() || entry.path().filename().string().starts_with(".tmp_")) continue;
    candidates.push_back(entry.path());
  }

  // Names start with a UTC timestamp, so reverse name order is newest first.
  std::sort(candidates.begin(), candidates.end(), std::greater<>());
  for (const fs::path& candidate : candidates) {
    const std::optional<ReuseDefect> defect = reuse_defect(candidate, config, config_id, plan);
    if (!defect) return candidate;
    if (defect->broken) {
      spdlog::warn("not reusing dataset {}, which will be regenerated: {}", candidate.string(), defect->reason);
    } else {
      spdlog::info("not reusing dataset {}: {}", candidate.string(), defect->reason);
    }
  }
  return std::nullopt;
}

fs::file_time_type latest_write_time(const fs::path& dir) {
  fs::file_time_type latest = fs::last_write_time(dir);
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(dir)) {
    std::error_code error;
    const fs::file_time_type time = entry.last_write_time(error);
    if (!error) latest = std::max(latest, time);
  }
  return latest;
}

// The process id in a staging directory name ".tmp_<YYYYmmdd-HHMMSS>_<pid>_<8 hex>",
// or -1 when the name has another form.
long staging_owner(const std::string& name) {
  const std::size_t pid_start = name.find('_', 5);
  const std::size_t pid_end = pid_start == std::string::npos ? std::string::npos : name.find('_', pid_start + 1);
  if (!name.starts_with(".tmp_") || pid_end == std::string::npos) return -1;

  long pid = -1;
  const char* first = name.data() + pid_start + 1;
  const char* last = name.data() + pid_end;
  const auto [end, error] = std::from_chars(first, last, pid);
  if (first == last || error != std::errc() || end != last || pid <= 0) return -1;
  return pid;
}

// Removes the staging directories under `root` whose writer is gone. With
// `lock_held`, every builder that takes the lock is known to have stopped, so a
// directory goes when the process id in its name is not alive on this host or
// is this process. Directories of live process ids (perhaps a writer that takes
// no lock, or a reused id), and all of them without the lock, go only when
// nothing in them has changed for kStaleStagingAge.
void remove_orphaned_staging(const fs::path& root, bool lock_held) {
  const fs::file_time_type now = fs::file_time_type::clock::now();
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !name.starts_with(".tmp_")) continue;
    try {
      const long owner = staging_owner(name);
      const bool owner_gone = owner > 0 && (owner == static_cast<long>(getpid()) || !process_alive(owner));
      if (lock_held && owner_gone) {
        spdlog::warn("removing staging directory {} of a dataset build that stopped (process {} is gone)",
                     entry.path().string(), owner);
      } else if (now - latest_write_time(entry.path()) >= kStaleStagingAge) {
        spdlog::warn("removing stale dataset staging directory {} (unchanged for over 24 h)", entry.path().string());
      } else {
        continue;
      }
      fs::remove_all(entry.path());
    } catch (const fs::filesystem_error& error) {
      spdlog::warn("cannot remove staging directory {}: {}", entry.path().string(), error.what());
    }
  }
}

bool any_instance_missing(const VolumePlan& plan, const FractalLibraryPaths& library) {
  return std::any_of(plan.placements.begin(), plan.placements.end(), [&](const FractalPlacement& placement) {
    return !fs::is_regular_file(instance_path(library, placement.category, placement.instance));
  });
}

std::string mask_values_yaml(const std::vector<int>& values) {
  return fmt::format("mask_values: {}\n", yaml_list(values));
}

// A new staging directory ".tmp_<YYYYmmdd-HHMMSS>_<pid>_<8 hex>" under `root`.
fs::path create_staging_dir(const fs::path& root, const UtcTime& created) {
  const fs::path staging = root / fmt::format(".tmp_{}_{}_{}", created.directory_stamp, getpid(), random_hex8());
  fs::create_directories(staging);
  return staging;
}

// Writes the small files into `staging`, meta.yaml last, and renames it to
// <timestamp>__<commit>; returns the final path.
fs::path finish_dataset(const Config& config, const std::string& config_id, const VolumePlan& plan,
                        const fs::path& root, const fs::path& staging, const UtcTime& created) {
  write_file_atomic(staging / "volumes_contents.csv", volumes_contents_csv(plan));
  write_file_atomic(staging / "train_unique_mask_vals.yaml",
                    mask_values_yaml(mask_values_present(plan, plan.train_ids)));
  write_file_atomic(staging / "val_unique_mask_vals.yaml", mask_values_yaml(mask_values_present(plan, plan.val_ids)));
  write_file_atomic(staging / "meta.yaml", meta_yaml_text(config, config_id, plan, created.iso));

  // Two builds in the same second get -2, -3, ... which still sort newest last.
  const std::string base_name = fmt::format("{}__{}", created.directory_stamp, kGitCommit);
  fs::path final_dir = root / base_name;
  for (int attempt = 2; fs::exists(final_dir); ++attempt) final_dir = root / fmt::format("{}-{}", base_name, attempt);
  fs::rename(staging, final_dir);
  return final_dir;
}

// Volume indices in one split directory, from names "<v>_shard000000.npy".
std::vector<int> list_volume_ids(const fs::path& dataset_dir, Split split) {
  const bool validation = split == Split::kValidation;
  const fs::path dir = dataset_dir / "volumes" / (validation ? "validation" : "training");
  if (!fs::is_directory(dir)) {
    throw DatasetError(fmt::format("dataset directory {} is missing; the dataset is incomplete, delete {} and run the "
                                   "benchmark again to regenerate it",
                                   dir.string(), dataset_dir.string()));
  }

  constexpr std::string_view kSuffix = "_shard000000.npy";
  std::vector<int> ids;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with('.')) continue;  // temporary files of an atomic write

    int id = -1;
    const bool has_suffix = name.size() > kSuffix.size() && name.ends_with(kSuffix);
    const char* end = name.data() + name.size() - kSuffix.size();
    const auto [parsed_end, error] = std::from_chars(name.data(), end, id);
    if (!has_suffix || error != std::errc() || parsed_end != end || id < 0) {
      throw DatasetError(fmt::format("unexpected file {}: volume files are named <index>_shard000000.npy (one shard "
                                     "per volume); remove the file or regenerate the dataset",
                                     entry.path().string()));
    }

    const fs::path mask = mask_file(dataset_dir, validation, id);
    if (!fs::is_regular_file(mask)) {
      throw DatasetError(fmt::format("mask {} for volume {} is missing; delete the dataset directory {} and run the "
                                     "benchmark again to regenerate it",
                                     mask.string(), entry.path().string(), dataset_dir.string()));
    }
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace

std::string dataset_config_json(const Config& config) { return config_subset(config, true).dump(); }

std::string dataset_config_id(const Config& config) { return sha256_hex(dataset_config_json(config)).substr(0, 12); }

DatasetInfo ensure_dataset(const Config& config, const RankShare& share) {
  const TraceRegion region("get_dataset");
  check_dataset_config(config);
  const std::string config_id = dataset_config_id(config);
  const fs::path root = fs::path(config.dataset_dir) / config_id;
  const VolumePlan plan = plan_volumes(config);
  const FractalLibraryPaths library = fractal_library_paths(config);

  // Rank 0 decides: "R<dir>" reuses a dataset, "L" builds the fractal library
  // and then the dataset, "B" builds only the dataset.
  std::string decision;
  std::optional<FileLock> lock;
  if (share.is_root()) {
    // A finished dataset appears only by the rename of a complete staging
    // directory, so it can be found and reused without the lock. Debris of
    // killed builds goes when no builder runs right now.
    if (const std::optional<fs::path> reusable = find_reusable_dataset(root, config, config_id, plan)) {
      if (const std::optional<FileLock> cleanup_lock = FileLock::try_acquire(root / kLockFileName)) {
        remove_orphaned_staging(root, true);
      }
      decision = "R" + reusable->string();
    } else {
      // One builder at a time. A process that waited here finds the dataset
      // that the other one built.
      fs::create_directories(root);
      lock.emplace(root / kLockFileName, "building dataset " + root.string());
      if (const std::optional<fs::path> built = find_reusable_dataset(root, config, config_id, plan)) {
        decision = "R" + built->string();
      } else {
        remove_orphaned_staging(root, lock->held());
        decision = any_instance_missing(plan, library) ? "L" : "B";
      }
    }
  }
  share.broadcast_from_root(decision);
  if (decision[0] == 'R') {
    spdlog::info("reusing dataset {}", decision.substr(1));
    return open_dataset(decision.substr(1));
  }

  if (decision[0] == 'L') {
    spdlog::info("fractal instances missing under {}; generating the fractal library", library.instances_dir.string());
    generate_fractal_library(config, 10000, share);
  }

  spdlog::info("generating dataset {}: {} volumes ({} training, {} validation) of {}^3 voxels", config_id,
               plan.n_volumes(), plan.train_ids.size(), plan.val_ids.size(), config.vol_size());
  const UtcTime created = utc_now();
  std::string staging_text;
  if (share.is_root()) staging_text = create_staging_dir(root, created).string();
  share.broadcast_from_root(staging_text);
  const fs::path staging = staging_text;

  // Volumes on every rank, then the small files on rank 0. A failure on rank 0
  // removes the staging directory; one on another rank ends the whole job.
  std::string final_text;
  try {
    write_volume_files(config, plan, library, staging, share);
    // Each rank flushes its own volumes (in one pass) before rank 0 publishes them.
    sync_filesystem(staging);
    share.barrier();
    if (share.is_root()) final_text = finish_dataset(config, config_id, plan, root, staging, created).string();
  } catch (...) {
    if (share.is_root()) {
      std::error_code ignored;
      fs::remove_all(staging, ignored);
    }
    throw;
  }
  share.broadcast_from_root(final_text);
  spdlog::info("dataset written to {}", final_text);
  return open_dataset(final_text);
}

DatasetInfo open_dataset(const fs::path& dir) {
  const YAML::Node meta = read_meta(dir);
  const fs::path meta_path = dir / "meta.yaml";

  const int version = meta_value<int>(meta, "dataset_format_version", meta_path);
  if (version != kDatasetFormatVersion) {
    throw DatasetError(fmt::format("{}: dataset_format_version is {}, but this program reads only format {}; delete "
                                   "the dataset directory {} and run the benchmark again to regenerate it",
                                   meta_path.string(), version, kDatasetFormatVersion, dir.string()));
  }

  // Sizes come from config_subset, which datasets of the reference also carry.
  const YAML::Node subset = meta["config_subset"];
  if (!subset || !subset.IsMap()) {
    throw DatasetError(fmt::format("{} has no config_subset mapping; delete the dataset directory {} and run the "
                                   "benchmark again to regenerate it",
                                   meta_path.string(), dir.string()));
  }
  const int problem_scale = meta_value<int>(subset, "problem_scale", meta_path);
  const int n_categories = meta_value<int>(subset, "n_categories", meta_path);
  if (problem_scale < 1 || problem_scale > 16 || n_categories < 1 || n_categories > 65534) {
    throw DatasetError(fmt::format("{}: config_subset has problem_scale {} and n_categories {}, outside [1, 16] and "
                                   "[1, 65534]; the file is corrupt, regenerate the dataset",
                                   meta_path.string(), problem_scale, n_categories));
  }

  DatasetInfo info;
  info.dir = dir;
  info.config_id = meta_value<std::string>(meta, "config_id", meta_path);
  info.vol_size = 1 << problem_scale;
  info.n_classes = n_categories + 1;
  info.train_ids = list_volume_ids(dir, Split::kTraining);
  info.val_ids = list_volume_ids(dir, Split::kValidation);

  // Counts are extras of this program; a dataset of the reference lacks them.
  // A volume missing from both splits is named by the file it should have.
  if (meta["n_volumes"]) {
    const int n_volumes = meta_value<int>(meta, "n_volumes", meta_path);
    for (int v = 0; v < n_volumes; ++v) {
      if (std::binary_search(info.train_ids.begin(), info.train_ids.end(), v) ||
          std::binary_search(info.val_ids.begin(), info.val_ids.end(), v)) {
        continue;
      }
      std::string missing = fmt::format("neither {} nor {} exists", volume_file(dir, false, v).string(),
                                        volume_file(dir, true, v).string());
      for (const bool validation : {false, true}) {
        if (fs::exists(mask_file(dir, validation, v))) {
          missing = fmt::format("{} does not exist, but its mask does", volume_file(dir, validation, v).string());
        }
      }
      throw DatasetError(fmt::format("volume {} of dataset {} is missing: {}; the dataset is incomplete, delete the "
                                     "directory and run the benchmark again to regenerate it",
                                     v, dir.string(), missing));
    }
  }
  for (const auto& [key, ids] : {std::pair{"n_train", &info.train_ids}, std::pair{"n_val", &info.val_ids}}) {
    if (!meta[key]) continue;
    const auto expected = meta_value<std::size_t>(meta, key, meta_path);
    if (ids->size() != expected) {
      throw DatasetError(fmt::format("{} lists {} = {}, but {} volume files were found; the dataset is incomplete, "
                                     "delete {} and run the benchmark again to regenerate it",
                                     meta_path.string(), key, expected, ids->size(), dir.string()));
    }
  }

  std::vector<int> both;
  std::set_intersection(info.train_ids.begin(), info.train_ids.end(), info.val_ids.begin(), info.val_ids.end(),
                        std::back_inserter(both));
  if (!both.empty()) {
    throw DatasetError(fmt::format("dataset {}: volume {} is in both the training and the validation split; delete the "
                                   "directory and run the benchmark again to regenerate it",
                                   dir.string(), both.front()));
  }
  return info;
}

std::string dataset_manifest_hash(const DatasetInfo& info) {
  std::string manifest;
  for (const char* name : {"meta.yaml", "volumes_contents.csv"}) {
    const fs::path path = info.dir / name;
    try {
      manifest += read_file(path);
    } catch (const std::exception& error) {
      throw DatasetError(fmt::format("dataset file {} cannot be read: {}", path.string(), error.what()));
    }
    manifest += '\0';
  }
  for (const std::vector<int>* ids : {&info.train_ids, &info.val_ids}) {
    for (const int id : *ids) {
      manifest += std::to_string(id) + ",";
    }
    manifest += '\0';
  }
  return sha256_hex(manifest);
}

fs::path volume_path(const DatasetInfo& info, Split split, int volume_index) {
  return volume_file(info.dir, split == Split::kValidation, volume_index);
}

fs::path mask_path(const DatasetInfo& info, Split split, int volume_index) {
  return mask_file(info.dir, split == Split::kValidation, volume_index);
}

Sample load_sample(const DatasetInfo& info, Split split, int volume_index) {
  const std::int64_t g = info.vol_size;
  const fs::path volume_file_path = volume_path(info, split, volume_index);
  const fs::path mask_file_path = mask_path(info, split, volume_index);
  if (const int injected_errno = fault_point("sample_read"); injected_errno != 0) {
    throw IoError("reading", volume_file_path, injected_errno);
  }
  const NpyArray volume = read_npy_checked(volume_file_path, DType::kFloat32, {3, g, g, g});
  const NpyArray mask = read_npy_checked(mask_file_path, DType::kUInt16, {g, g, g});

  Sample sample;
  sample.volume_index = volume_index;
  sample.volume.assign(volume.as<float>(), volume.as<float>() + volume.element_count());
  sample.mask.assign(mask.as<std::uint16_t>(), mask.as<std::uint16_t>() + mask.element_count());

  // A label past the class count would index outside the loss's class weights.
  const int max_label = info.n_classes - 1;
  const auto largest = std::max_element(sample.mask.begin(), sample.mask.end());
  if (largest != sample.mask.end() && *largest > max_label) {
    throw DatasetError(fmt::format("mask {} contains label {} at flat index {}, but valid labels are 0..{} "
                                   "(n_categories = {}); delete the dataset directory {} and run the benchmark again "
                                   "to regenerate it",
                                   mask_file_path.string(), *largest, largest - sample.mask.begin(), max_label,
                                   max_label, info.dir.string()));
  }
  return sample;
}

}  // namespace scaffold
