#include "fractal/library.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <optional>
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/atomic_file.hpp"
#include "core/file_lock.hpp"
#include "core/npy.hpp"
#include "fractal/class_search.hpp"
#include "fractal/instances.hpp"

namespace scaffold {

FractalLibraryPaths fractal_library_paths(const Config& config) {
  FractalLibraryPaths paths;
  paths.root = std::filesystem::path(config.fract_base_dir) / ("var" + format_threshold(config.variance_threshold)) /
               ("seed" + std::to_string(config.seed));
  paths.params_dir = paths.root / "3DIFS_param";
  paths.instances_dir = paths.root / "instances" / ("np" + std::to_string(config.point_num()));
  return paths;
}

std::filesystem::path class_csv_path(const FractalLibraryPaths& paths, int category) {
  return paths.params_dir / class_csv_name(category);
}

std::filesystem::path instance_path(const FractalLibraryPaths& paths, int category, int instance) {
  return paths.instances_dir / fmt::format("{:06d}", category) / fmt::format("{:06d}_{:04d}.npy", category, instance);
}

std::filesystem::path library_lock_path(const FractalLibraryPaths& paths) { return paths.root / ".lock"; }

namespace {

// Removes the temporary files that killed writers left in the class directory
// and the instance directories of this point count.
void remove_orphaned_library_files(const FractalLibraryPaths& paths) {
  int removed = remove_orphaned_temporary_files(paths.params_dir);
  removed += remove_orphaned_temporary_files(paths.instances_dir);

  std::error_code error;
  std::filesystem::directory_iterator entries(paths.instances_dir, error);
  if (error) return;
  for (const std::filesystem::directory_entry& entry : entries) {
    if (entry.is_directory(error)) removed += remove_orphaned_temporary_files(entry.path());
  }
  if (removed > 0) spdlog::warn("removed {} partly written files under {}", removed, paths.root.string());
}

}  // namespace

void generate_fractal_library(const Config& config, int batch_size, const RankShare& share) {
  const auto started = std::chrono::steady_clock::now();
  const FractalLibraryPaths paths = fractal_library_paths(config);

  // One job at a time: a second process waits here, then finds the files of
  // the first and keeps them. Only rank 0 takes the lock and cleans up; the
  // other ranks wait for it at the barrier.
  std::optional<FileLock> lock;
  if (share.is_root()) {
    std::filesystem::create_directories(paths.root);
    lock.emplace(library_lock_path(paths), "generating the fractal library " + paths.root.string());
    if (lock->held()) remove_orphaned_library_files(paths);

    if (config.datagen_from_scratch) {
      spdlog::info("datagen_from_scratch: deleting {} and {}", paths.params_dir.string(),
                   paths.instances_dir.string());
      std::filesystem::remove_all(paths.params_dir);
      std::filesystem::remove_all(paths.instances_dir);
    }
  }
  share.barrier();

  const std::vector<Ifs> classes = search_classes(paths.params_dir, config, batch_size, nullptr, share);
  const auto searched = std::chrono::steady_clock::now();

  generate_instances(paths, config, classes, share);
  // Every instance exists before any rank goes on to use the library.
  share.barrier();
  const auto finished = std::chrono::steady_clock::now();

  spdlog::info("fractal library {}: {} classes, point_num {}; class search {:.2f} s, instances {:.2f} s",
               paths.root.string(), classes.size(), config.point_num(),
               std::chrono::duration<double>(searched - started).count(),
               std::chrono::duration<double>(finished - searched).count());
}

std::vector<float> read_instance(const std::filesystem::path& path, std::int64_t expected_points) {
  const NpyArray array = read_npy_checked(path, DType::kFloat32, {expected_points, 3});
  const float* values = array.as<float>();
  const std::int64_t count = array.element_count();

  for (std::int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) {
      throw NpyError(fmt::format("invalid instance file {}: point {} has a non-finite coordinate ({}); delete the "
                                 "file to regenerate it, or set datagen_from_scratch: 1",
                                 path.string(), i / 3, values[i]));
    }
  }
  return std::vector<float>(values, values + count);
}

}  // namespace scaffold
