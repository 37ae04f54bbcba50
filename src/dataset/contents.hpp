// Volume contents (which fractal instances, in which order), the
// train/validation split and the colour of each category. Every draw comes from
// CounterRng streams keyed by the config seed, so the plan is a pure function of
// the config.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace scaffold {

struct FractalPlacement {
  int category = 0;
  int instance = 0;  // 0 .. kInstancesPerClass - 1
};

struct VolumePlan {
  int n_fracts_per_vol = 0;
  std::vector<FractalPlacement> placements;  // [n_volumes * n_fracts_per_vol], volume-major, drawing order
  std::vector<int> train_ids;                // sorted
  std::vector<int> val_ids;                  // sorted
  std::vector<std::array<float, 3>> colours;  // [n_categories] RGB in [0, 1)

  int n_volumes() const { return n_fracts_per_vol > 0 ? static_cast<int>(placements.size()) / n_fracts_per_vol : 0; }
  std::span<const FractalPlacement> volume(int volume_index) const {
    return std::span(placements).subspan(static_cast<std::size_t>(volume_index) * n_fracts_per_vol, n_fracts_per_vol);
  }
};

// Checks the config keys that the dataset depends on; throws ConfigError naming
// the key, its value and the valid range.
void check_dataset_config(const Config& config);

// n_instances_used_per_fractal rounded down to a multiple of n_fracts_per_vol.
int instances_used_per_category(const Config& config);

// Draws the (category, instance) pairs of every volume. Category c takes
// instances_used_per_category distinct ids out of 0..144 in chunks of at most
// 145 (so ids repeat only past 145), by a partial Fisher-Yates shuffle on the
// stream (seed, kVolumeContents, 1 + c). The pairs, concatenated category-major,
// are shuffled with the stream (seed, kVolumeContents, 0); volume v takes pairs
// [v * F, (v + 1) * F) with F = n_fracts_per_vol.
std::vector<FractalPlacement> draw_volume_contents(const Config& config);

// Draws floor(n_volumes * val_split / 100) distinct validation volume indices
// from the stream (seed, kSplit, 0); returns them sorted.
std::vector<int> draw_validation_ids(int n_volumes, double val_split, std::uint64_t seed);

// One RGB colour per category, each channel uniform in [0, 1) with 24 random
// bits (exactly representable in float32) from the stream (seed, kColours, 0).
std::vector<std::array<float, 3>> draw_colours(int n_categories, std::uint64_t seed);

// The whole plan for a config: contents, split and colours.
VolumePlan plan_volumes(const Config& config);

// volumes_contents.csv text: one line "v,c1,i1,c2,i2,..." per volume, no header.
std::string volumes_contents_csv(const VolumePlan& plan);

// Sorted mask labels that can occur in the given volumes: 0 (background) and
// category + 1 for every category placed in them.
std::vector<int> mask_values_present(const VolumePlan& plan, std::span<const int> volume_ids);

}  // namespace scaffold
