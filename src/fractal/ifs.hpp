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

  bool operator==(const AffineMap&) const = default;
};

struct Ifs {
  std::array<AffineMap, 2> maps{};

  bool operator==(const Ifs&) const = default;
};

// Result of running the chaos game.
struct PointCloud {
  std::vector<double> xyz;  // [N, 3], row-major
  bool runaway = false;     // some |coordinate| exceeded 1e10, or was not finite
};

// Magnitude above which a coordinate counts as a runaway orbit.
inline constexpr double kRunawayLimit = 1e10;

// Determinant of a row-major 3x3 matrix.
double determinant(const std::array<double, 9>& matrix);

// Sets each map's probability to |det M_t| / (|det M_0| + |det M_1|). When both
// determinants are 0 the ratio is undefined, and both maps get 0.5.
void assign_probabilities(Ifs& ifs);

// Draws a candidate: the 26 map entries uniform in [-1, 1), in the order map 0
// matrix a..i, map 0 translation j..l, then the same for map 1; probabilities
// from assign_probabilities.
Ifs random_ifs(CounterRng& rng);

// Generates `n` points: point 0 is the origin, point i applies map 0 when
// U_i < maps[0].probability (U_i = the i-th rng.uniform()), else map 1, to
// point i-1. No burn-in. n <= 0 gives an empty cloud.
// The orbit stops at the first runaway it notices: `runaway` is set, xyz still
// has 3n entries, and the entries from the failing stretch onwards are
// unspecified (the rng has then also advanced by fewer than n-1 draws).
PointCloud generate_points(const Ifs& ifs, std::int64_t n, CounterRng& rng);

}  // namespace scaffold
