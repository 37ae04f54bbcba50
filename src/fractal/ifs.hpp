// Iterated function systems of two 3D affine maps, and the point-generation
// kernel shared by the class search and instance generation.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/rng.hpp"

namespace scaffold {

// One affine map x' = M x + t, chosen with probability `probability`.
// Row-major 3x3 matrix (a..i), translation (j, k, l): the 13 columns of a row of
// the reference's parameter CSV.
struct AffineMap {
  std::array<double, 9> matrix{};
  std::array<double, 3> translation{};
  double probability = 0.0;
};

struct Ifs {
  std::array<AffineMap, 2> maps{};
};

// Result of running the chaos game.
struct PointCloud {
  std::vector<double> xyz;  // [N, 3], row-major
  bool runaway = false;     // some |coordinate| exceeded 1e10, or was not finite
};

// Draws a candidate: all 26 map entries uniform in (-1, 1), probabilities
// |det M_t| / (|det M_0| + |det M_1|).
Ifs random_ifs(CounterRng& rng);

// Generates `n` points: point 0 is the origin, point i applies map 0 when
// U_i < maps[0].probability (U_i from `rng`), else map 1, to point i-1.
// No burn-in. n <= 0 gives an empty cloud.
PointCloud generate_points(const Ifs& ifs, std::int64_t n, CounterRng& rng);

}  // namespace scaffold
