// Point cloud to voxel indices: each instance is scaled isotropically so that
// its longest axis spans the grid, then centred on the grid along every axis.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace scaffold {

// (x, y, z) voxel index; x is the D axis, y the H axis, z the W axis.
using Voxel = std::array<int, 3>;

// Maps `n` points `xyz` [n, 3] (row-major float32) to the distinct voxels of a
// grid x grid x grid volume, sorted lexicographically.
//
// With min_a and max_a the per-axis bounds and E = max_a (max_a - min_a):
//   s = (E + 1e-6) / grid, q_a = (p_a - min_a) / s,
//   offset_a = (grid - max over points of q_a) / 2,
//   index_a = clamp(floor(q_a + offset_a), 0, grid - 1).
// The arithmetic runs in float64 on the float32 inputs. The reference does the
// same steps on float32 arrays, so a point within float32 rounding of a voxel
// boundary can land in the neighbouring voxel there.
//
// Throws std::invalid_argument when grid < 1 or a coordinate is NaN or
// infinite (the message names the point and axis). n == 0 gives no voxels.
std::vector<Voxel> voxelize(const float* xyz, std::int64_t n, int grid);

}  // namespace scaffold
