// The fractal library on disk: accepted IFS classes (CSV) and 145 instances
// per class (.npy point clouds), in the reference's directory layout.
#pragma once

#include <filesystem>
#include <vector>

#include "core/config.hpp"
#include "core/rank_share.hpp"
#include "fractal/ifs.hpp"

namespace scaffold {

inline constexpr int kInstancesPerClass = 145;

struct FractalLibraryPaths {
  std::filesystem::path root;           // <fract_base_dir>/var<threshold>/seed<seed>
  std::filesystem::path params_dir;     // root/3DIFS_param, files NNNNNN.csv
  std::filesystem::path instances_dir;  // root/instances/np<point_num>, files <c:06d>/<c:06d>_<k:04d>.npy
};

FractalLibraryPaths fractal_library_paths(const Config& config);
std::filesystem::path class_csv_path(const FractalLibraryPaths& paths, int category);
std::filesystem::path instance_path(const FractalLibraryPaths& paths, int category, int instance);

// root/.lock, locked (core/file_lock.hpp) while the library is generated.
std::filesystem::path library_lock_path(const FractalLibraryPaths& paths);

// Searches classes until `n_categories` CSVs exist, then writes every missing
// instance. Reuses valid existing files unless `datagen_from_scratch` is set.
// `batch_size` is the number of candidates tried per round. Holds the lock
// library_lock_path throughout, so concurrent calls for the same library run
// one after the other, and first removes the temporary files of writers that
// were killed. With several ranks in `share`, every rank must call it. Rank 0
// holds the lock and writes the class files. The candidate evaluations and
// the instances are dealt out over the ranks, and the files are the same bytes
// for any rank count.
void generate_fractal_library(const Config& config, int batch_size = 10000, const RankShare& share = {});

// Reads one class CSV (2 rows x 13 values); throws naming the file on any defect.
Ifs read_class_csv(const std::filesystem::path& path);

// Reads one instance (float32 [N, 3]); throws naming the file when it has the
// wrong dtype or shape, or contains a non-finite coordinate.
std::vector<float> read_instance(const std::filesystem::path& path, std::int64_t expected_points);

}  // namespace scaffold
