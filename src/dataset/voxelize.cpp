#include "dataset/voxelize.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace scaffold {

std::vector<Voxel> voxelize(const float* xyz, std::int64_t n, int grid) {
  if (grid < 1) throw std::invalid_argument("voxelize: grid size must be at least 1, got " + std::to_string(grid));
  if (n <= 0) return {};

  // Per-axis bounds; a non-finite coordinate would poison every index.
  std::array<double, 3> lo{}, hi{};
  lo.fill(std::numeric_limits<double>::infinity());
  hi.fill(-std::numeric_limits<double>::infinity());
  for (std::int64_t i = 0; i < n; ++i) {
    for (int a = 0; a < 3; ++a) {
      const double p = xyz[3 * i + a];
      if (!std::isfinite(p)) {
        throw std::invalid_argument("voxelize: point " + std::to_string(i) + " has a non-finite coordinate on axis " +
                                    std::to_string(a) + " (" + std::to_string(p) +
                                    "); the point cloud is invalid and must be regenerated");
      }
      lo[a] = std::min(lo[a], p);
      hi[a] = std::max(hi[a], p);
    }
  }

  // One voxel size for all axes keeps the shape undistorted; the 1e-6 keeps the
  // far end of the longest axis below `grid`.
  const double extent = std::max({hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]});
  const double voxel_size = (extent + 1e-6) / grid;

  // Centre each axis: the occupied span sits in the middle of the grid.
  std::array<double, 3> offset{};
  for (int a = 0; a < 3; ++a) {
    double span = 0.0;
    for (std::int64_t i = 0; i < n; ++i) span = std::max(span, (xyz[3 * i + a] - lo[a]) / voxel_size);
    offset[a] = (grid - span) / 2.0;
  }

  // Clamping matters only when the extent is so large (about 1e10 and above)
  // that adding 1e-6 no longer changes it, and q reaches `grid`.
  std::vector<Voxel> voxels(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    for (int a = 0; a < 3; ++a) {
      const double q = (xyz[3 * i + a] - lo[a]) / voxel_size;
      const double index = std::floor(q + offset[a]);
      voxels[i][a] = static_cast<int>(std::clamp(index, 0.0, static_cast<double>(grid - 1)));
    }
  }

  std::sort(voxels.begin(), voxels.end());
  voxels.erase(std::unique(voxels.begin(), voxels.end()), voxels.end());
  return voxels;
}

}  // namespace scaffold
