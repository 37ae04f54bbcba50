#include "fractal/library.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

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

void generate_fractal_library(const Config& config, int batch_size) {
  const auto started = std::chrono::steady_clock::now();
  const FractalLibraryPaths paths = fractal_library_paths(config);

  if (config.datagen_from_scratch) {
    spdlog::info("datagen_from_scratch: deleting {} and {}", paths.params_dir.string(),
                 paths.instances_dir.string());
    std::filesystem::remove_all(paths.params_dir);
    std::filesystem::remove_all(paths.instances_dir);
  }

  const std::vector<Ifs> classes = search_classes(paths.params_dir, config, batch_size);
  const auto searched = std::chrono::steady_clock::now();

  generate_instances(paths, config, classes);
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
