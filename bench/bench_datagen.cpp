// Times each stage of data generation at problem scales 4 to 7 with the
// reference's default dataset (5 classes, 145 instances, 240 volumes):
// IFS point generation, class search, instances, and volumes.
//
// Usage: bench_datagen [WORK_DIR] [MIN_SCALE] [MAX_SCALE]
// WORK_DIR (default /tmp/scaffold_bench_datagen) is removed and recreated, so
// the run measures writes to that disk from an empty library.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/logging.hpp"
#include "core/rng.hpp"
#include "dataset/dataset.hpp"
#include "fractal/class_search.hpp"
#include "fractal/ifs.hpp"
#include "fractal/instances.hpp"
#include "fractal/library.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Points per second of one thread running the chaos game of a fixed IFS.
double points_per_second_one_thread(std::int64_t points) {
  scaffold::CounterRng params(1, scaffold::RngPurpose::kClassParams, 0);
  scaffold::Ifs ifs = scaffold::random_ifs(params);
  // A contractive pair, so the orbit never stops early on runaway.
  for (auto& map : ifs.maps) {
    for (double& m : map.matrix) m *= 0.3;
  }
  const int repeats = static_cast<int>(std::max<std::int64_t>(1, 50'000'000 / points));
  const Clock::time_point start = Clock::now();
  double checksum = 0;
  for (int r = 0; r < repeats; ++r) {
    scaffold::CounterRng rng(1, scaffold::RngPurpose::kClassPoints, static_cast<std::uint64_t>(r));
    checksum += scaffold::generate_points(ifs, points, rng).xyz.back();
  }
  const double seconds = seconds_since(start);
  if (checksum == 12345.678) std::printf(" ");  // keeps the loop from being optimised away
  return static_cast<double>(points) * repeats / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path work = argc > 1 ? fs::path(argv[1]) : fs::path("/tmp/scaffold_bench_datagen");
  const int min_scale = argc > 2 ? std::stoi(argv[2]) : 4;
  const int max_scale = argc > 3 ? std::stoi(argv[3]) : 7;
  scaffold::setup_logging(scaffold::Verbosity::kQuiet);
  const int threads = omp_get_max_threads();

  std::printf("threads: %d, work dir: %s\n", threads, work.c_str());
  std::printf("chaos game, 1 thread: %.1f M points/s at 8192 points, %.1f M points/s at 65536 points\n",
              points_per_second_one_thread(8192) / 1e6, points_per_second_one_thread(65536) / 1e6);
  std::printf("%5s %9s %10s %9s %12s %9s %11s %9s %9s\n", "scale", "points", "search_s", "attempts", "instances_s",
              "volumes", "volumes_s", "vol/s", "MB/s");

  for (int scale = min_scale; scale <= max_scale; ++scale) {
    fs::remove_all(work);
    fs::create_directories(work);
    scaffold::Config config;
    config.problem_scale = scale;
    config.unet_bottleneck_dim = std::min(3, scale - 1);
    config.fract_base_dir = (work / "fractals").string();
    config.dataset_dir = (work / "datasets").string();

    // Class search.
    const scaffold::FractalLibraryPaths paths = scaffold::fractal_library_paths(config);
    scaffold::ClassSearchStats search{};
    Clock::time_point start = Clock::now();
    const std::vector<scaffold::Ifs> classes = scaffold::search_classes(paths.params_dir, config, 10000, &search);
    const double search_s = seconds_since(start);

    // Instances.
    start = Clock::now();
    scaffold::generate_instances(paths, config, classes);
    const double instances_s = seconds_since(start);

    // Volumes and masks.
    start = Clock::now();
    const scaffold::DatasetInfo dataset = scaffold::ensure_dataset(config);
    const double volumes_s = seconds_since(start);
    const std::size_t volumes = dataset.train_ids.size() + dataset.val_ids.size();
    const double bytes = static_cast<double>(volumes) * std::pow(config.vol_size(), 3) * (3 * 4 + 2);

    std::printf("%5d %9lld %10.3f %9llu %12.3f %9zu %11.3f %9.1f %9.1f\n", scale,
                static_cast<long long>(config.point_num()), search_s, static_cast<unsigned long long>(search.attempts),
                instances_s, volumes, volumes_s, volumes / volumes_s, bytes / volumes_s / 1e6);
  }
  fs::remove_all(work);
  return 0;
}
