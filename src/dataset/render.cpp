#include "dataset/render.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <omp.h>

#include "core/npy.hpp"
#include "core/progress.hpp"
#include "core/trace.hpp"

namespace scaffold {

void render_volume(int grid, std::span<const PlacedFractal> fractals, std::span<const std::array<float, 3>> colours,
                   std::vector<float>& volume, std::vector<std::uint16_t>& mask) {
  const std::int64_t g = grid;
  const std::int64_t voxel_count = g * g * g;
  volume.assign(static_cast<std::size_t>(3 * voxel_count), 0.0f);
  mask.assign(static_cast<std::size_t>(voxel_count), 0);

  for (const PlacedFractal& fractal : fractals) {
    if (fractal.category < 0 || static_cast<std::size_t>(fractal.category) >= colours.size()) {
      throw std::out_of_range(fmt::format("render_volume: category {} has no colour; there are {} categories",
                                          fractal.category, colours.size()));
    }
    const std::array<float, 3>& colour = colours[fractal.category];
    const auto label = static_cast<std::uint16_t>(fractal.category + 1);

    for (const Voxel& voxel : fractal.voxels) {
      const std::int64_t offset = (voxel[0] * g + voxel[1]) * g + voxel[2];
      for (int c = 0; c < 3; ++c) volume[static_cast<std::size_t>(c * voxel_count + offset)] = colour[c];
      mask[static_cast<std::size_t>(offset)] = label;
    }
  }
}

std::filesystem::path volume_file(const std::filesystem::path& dataset_dir, bool validation, int volume_index) {
  return dataset_dir / "volumes" / (validation ? "validation" : "training") /
         fmt::format("{}_shard000000.npy", volume_index);
}

std::filesystem::path mask_file(const std::filesystem::path& dataset_dir, bool validation, int volume_index) {
  return dataset_dir / "masks" / (validation ? "validation" : "training") /
         fmt::format("{}_shard000000_mask.npy", volume_index);
}

namespace {

// Volume size from which volume and mask files are written with Sync::kDirect
// (O_DIRECT) instead of through the page cache: 16 MiB, so scale 7 (24 MiB
// volumes) and above. Measured with bench_datagen on the development VM,
// against 1.4-1.5 GB/s for dd with O_DIRECT:
//   - scale 7 (7.0 GB for 240 volumes and masks, more than the kernel lets
//     stay dirty): buffered writes reached 622 MB/s, direct ones 1006 and
//     1027 MB/s in two runs;
//   - scale 6 (3 MiB volumes, 0.8 GB in all): buffered writes and one syncfs
//     reached 1546 MB/s, direct ones 1043 MB/s;
//   - scale 5: direct writes of 0.4 MiB files wait on the disk for each file.
constexpr std::size_t kDirectVolumeBytes = std::size_t{16} << 20;

// Reads, voxelizes and paints one volume, then writes its two files.
void write_one_volume(const Config& config, const VolumePlan& plan, const FractalLibraryPaths& library,
                      const std::filesystem::path& dataset_dir, int volume_index, std::vector<float>& volume,
                      std::vector<std::uint16_t>& mask) {
  const int grid = config.vol_size();
  std::vector<PlacedFractal> fractals;
  for (const FractalPlacement& placement : plan.volume(volume_index)) {
    const std::filesystem::path path = instance_path(library, placement.category, placement.instance);
    const std::vector<float> points = read_instance(path, config.point_num());
    try {
      fractals.push_back({placement.category, voxelize(points.data(), config.point_num(), grid)});
    } catch (const std::invalid_argument& error) {
      throw std::runtime_error(fmt::format("cannot voxelize instance {}: {}; delete the file and run "
                                           "`scaffold generate_fractals` to regenerate it",
                                           path.string(), error.what()));
    }
  }

  render_volume(grid, fractals, plan.colours, volume, mask);

  const bool validation = std::binary_search(plan.val_ids.begin(), plan.val_ids.end(), volume_index);
  const std::int64_t g = grid;
  // The staging directory is synced once before it is published. Large
  // volumes bypass the page cache; see kDirectVolumeBytes.
  const Sync sync = volume.size() * sizeof(float) >= kDirectVolumeBytes ? Sync::kDirect : Sync::kDeferred;
  write_npy(volume_file(dataset_dir, validation, volume_index), DType::kFloat32, {3, g, g, g}, volume.data(),
            "volume_write", sync);
  write_npy(mask_file(dataset_dir, validation, volume_index), DType::kUInt16, {g, g, g}, mask.data(), "mask_write",
            sync);
}

}  // namespace

void write_volume_files(const Config& config, const VolumePlan& plan, const FractalLibraryPaths& library,
                        const std::filesystem::path& dataset_dir, const RankShare& share) {
  for (const char* kind : {"volumes", "masks"}) {
    for (const char* split : {"training", "validation"}) std::filesystem::create_directories(dataset_dir / kind / split);
  }

  // Exceptions must not leave an OpenMP region; each thread keeps the error of
  // its lowest volume index and the lowest one overall is rethrown.
  const int n_volumes = plan.n_volumes();
  std::atomic<bool> failed = false;
  int failed_index = std::numeric_limits<int>::max();
  std::exception_ptr failure;
  const TraceRegion region("volumes");
  Progress progress("volumes", n_volumes, "volumes");

#pragma omp parallel
  {
    // Reused across this thread's volumes: 14 bytes per voxel.
    std::vector<float> volume;
    std::vector<std::uint16_t> mask;

#pragma omp for schedule(dynamic, 1)
    for (int v = 0; v < n_volumes; ++v) {
      if (!share.owns(v) || failed.load(std::memory_order_relaxed)) continue;
      try {
        write_one_volume(config, plan, library, dataset_dir, v, volume, mask);
        progress.advance();
      } catch (...) {
#pragma omp critical(scaffold_write_volume_failure)
        {
          if (v < failed_index) {
            failed_index = v;
            failure = std::current_exception();
          }
          failed = true;
        }
      }
    }
  }

  if (failure) std::rethrow_exception(failure);
}

}  // namespace scaffold
