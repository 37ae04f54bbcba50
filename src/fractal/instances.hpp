// Instances of a fractal class: 145 variants made by scaling the class's
// parameters with one row of a fixed weight table, saved as point clouds.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/config.hpp"
#include "fractal/ifs.hpp"
#include "fractal/library.hpp"

namespace scaffold {

// Multipliers for the 12 parameters a..l (matrix a..i, translation j..l) of both maps.
using InstanceWeights = std::array<double, 12>;

// The 145 x 12 weight table. Rows 0-12 scale parameter a by 0.4, 0.5, ..., 1.6
// (row 6 is all ones, the class itself). Then, for parameter p = 1..11 (b..l),
// rows 13 + 12(p-1) .. 24 + 12(p-1) scale p by 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
// 1.1, 1.2, 1.3, 1.4, 1.5, 1.6 with the others at 1.
const std::array<InstanceWeights, kInstancesPerClass>& instance_weight_table();

// Moves weights towards 1: w' = 1 + (w - 1) * factor. Factor 1 returns `weights`
// unchanged and factor 0 returns all ones, both exactly.
InstanceWeights attenuate_weights(const InstanceWeights& weights, double factor);

// Multiplies the first 12 columns of both maps by `weights`. The probabilities
// stay as they are and are not recomputed from the new determinants.
Ifs apply_weights(const Ifs& ifs, const InstanceWeights& weights);

// Attenuation factors tried in order when an instance's orbit runs away.
// Factor 0 means all weights 1 (the class itself).
inline constexpr std::array<double, 5> kAttenuationFactors = {1.0, 0.5, 0.25, 0.1, 0.0};

struct Instance {
  std::vector<float> xyz;    // [point_num, 3], row-major
  double attenuation = 1.0;  // the factor that gave a valid cloud
};

// Generates instance `instance` (0..144) of class `category`: point_num points
// of apply_weights(class_ifs, weights) with CounterRng(seed, kInstancePoints,
// (category << 20) | instance), the same stream for every retry. A cloud that
// runs away is retried with the weights attenuated by each factor of
// kAttenuationFactors in turn. Throws naming the class and instance when even
// the class itself runs away.
Instance make_instance(const Ifs& class_ifs, int category, int instance, std::uint64_t seed, std::int64_t point_num);

struct InstanceStats {
  std::int64_t written = 0;      // instances generated because their file was missing
  std::int64_t reused = 0;       // valid files kept
  std::int64_t regenerated = 0;  // invalid files replaced
  std::int64_t attenuated = 0;   // instances that needed attenuated weights
};

// Makes sure every instance file of classes 0 .. classes.size()-1 exists and is
// valid, in parallel over (class, instance). The bytes written do not depend
// on the thread count. Invalid files are logged and regenerated. Each file is
// written with the fault point "instance_write" (core/fault_injection.hpp).
// With several ranks in `share`, each rank handles every size-th item and the
// returned counts are summed over ranks.
InstanceStats generate_instances(const FractalLibraryPaths& paths, const Config& config, const std::vector<Ifs>& classes,
                                 const RankShare& share = {});

}  // namespace scaffold
