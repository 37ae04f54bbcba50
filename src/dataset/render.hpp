// Volume and mask images: the voxelized fractal instances of one volume painted
// in their category colour, and the volume files of a whole dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "core/config.hpp"
#include "dataset/contents.hpp"
#include "dataset/voxelize.hpp"
#include "fractal/library.hpp"

namespace scaffold {

struct PlacedFractal {
  int category = 0;
  std::vector<Voxel> voxels;
};

// Paints the fractals in order, later ones over earlier ones: every voxel of a
// fractal gets its category colour in all 3 channels of `volume` and the label
// category + 1 in `mask`. Both are resized to the grid and zeroed first.
//   volume: float32 [3, D, H, W], D = H = W = grid, voxel (x, y, z) = (d, h, w)
//   mask:   uint16 [D, H, W], 0 = background
void render_volume(int grid, std::span<const PlacedFractal> fractals, std::span<const std::array<float, 3>> colours,
                   std::vector<float>& volume, std::vector<std::uint16_t>& mask);

// File names inside a dataset directory (format 5, one shard per volume).
std::filesystem::path volume_file(const std::filesystem::path& dataset_dir, bool validation, int volume_index);
std::filesystem::path mask_file(const std::filesystem::path& dataset_dir, bool validation, int volume_index);

// Reads the instances of every volume in `plan` from `library`, renders them and
// writes the volume and mask .npy files under `dataset_dir`. Volumes run in
// parallel over OpenMP threads; each file depends only on its own volume, so the
// output is byte-identical for any thread count. After the first failure no new
// volume starts, and the error of the lowest failing volume index is rethrown.
// Fault points (core/fault_injection.hpp): "volume_write" for each volume file,
// "mask_write" for each mask file.
// With several ranks in `share`, each rank writes every size-th volume. The
// files are not synced (Sync::kDeferred): call sync_filesystem before
// publishing them.
void write_volume_files(const Config& config, const VolumePlan& plan, const FractalLibraryPaths& library,
                        const std::filesystem::path& dataset_dir, const RankShare& share = {});

}  // namespace scaffold
