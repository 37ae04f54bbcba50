#include "dataset/contents.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "core/rng.hpp"
#include "fractal/library.hpp"

namespace scaffold {

void check_dataset_config(const Config& config) {
  // Labels are category + 1 in a uint16 mask.
  if (config.n_categories < 1 || config.n_categories > 65534) {
    throw ConfigError(fmt::format("n_categories = {} is invalid: it must be in [1, 65534]", config.n_categories));
  }
  if (config.n_fracts_per_vol < 1) {
    throw ConfigError(fmt::format("n_fracts_per_vol = {} is invalid: it must be at least 1", config.n_fracts_per_vol));
  }
  if (config.n_instances_used_per_fractal < config.n_fracts_per_vol) {
    throw ConfigError(fmt::format(
        "n_instances_used_per_fractal = {} is invalid: it must be at least n_fracts_per_vol = {}, because it is "
        "rounded down to a multiple of n_fracts_per_vol and no volume could be filled",
        config.n_instances_used_per_fractal, config.n_fracts_per_vol));
  }

  // Scale 3 is the smallest with point_num = vol_size^3 / 256 >= 1; above 16 the
  // voxel count vol_size^3 no longer fits the 64-bit offsets with channels.
  if (config.problem_scale < 3 || config.problem_scale > 16) {
    throw ConfigError(fmt::format("problem_scale = {} is invalid for dataset generation: it must be in [3, 16]",
                                  config.problem_scale));
  }
  if (!std::isfinite(config.val_split) || config.val_split < 0 || config.val_split >= 100) {
    throw ConfigError(fmt::format("val_split = {} is invalid: it is a percentage in [0, 100)", config.val_split));
  }

  if (config.dc_num_shards.size() != config.dc_shard_dims.size()) {
    throw ConfigError(fmt::format("dc_num_shards has {} entries but dc_shard_dims has {}; give one shard count per dim",
                                  config.dc_num_shards.size(), config.dc_shard_dims.size()));
  }
  for (int dim : config.dc_shard_dims) {
    if (dim < 2 || dim > 4) {
      throw ConfigError(fmt::format("dc_shard_dims = [{}] is invalid: every entry must be 2, 3 or 4 (the D, H, W dims of "
                                    "an [N, C, D, H, W] tensor)",
                                    fmt::join(config.dc_shard_dims, ", ")));
    }
  }
  for (int shards : config.dc_num_shards) {
    if (shards != 1) {
      throw ConfigError(fmt::format(
          "dc_num_shards = [{}] is not supported: this build writes unsharded volumes only; set every entry to 1",
          fmt::join(config.dc_num_shards, ", ")));
    }
  }
}

int instances_used_per_category(const Config& config) {
  return config.n_instances_used_per_fractal - config.n_instances_used_per_fractal % config.n_fracts_per_vol;
}

std::vector<FractalPlacement> draw_volume_contents(const Config& config) {
  check_dataset_config(config);
  const auto seed = static_cast<std::uint64_t>(config.seed);
  const int n_used = instances_used_per_category(config);

  // Each chunk samples without replacement from a fresh 0..144, so an id repeats
  // only when a category needs more than 145 instances.
  std::vector<FractalPlacement> placements;
  placements.reserve(static_cast<std::size_t>(config.n_categories) * n_used);
  for (int category = 0; category < config.n_categories; ++category) {
    CounterRng rng(seed, RngPurpose::kVolumeContents, 1 + static_cast<std::uint64_t>(category));
    int remaining = n_used;
    while (remaining > 0) {
      const int chunk = std::min(kInstancesPerClass, remaining);
      std::array<int, kInstancesPerClass> ids{};
      std::iota(ids.begin(), ids.end(), 0);
      for (int i = 0; i < chunk; ++i) {
        const auto j = i + static_cast<int>(rng.below(static_cast<std::uint64_t>(kInstancesPerClass - i)));
        std::swap(ids[i], ids[j]);
        placements.push_back({category, ids[i]});
      }
      remaining -= chunk;
    }
  }

  // Fisher-Yates over all pairs mixes categories across volumes.
  CounterRng rng(seed, RngPurpose::kVolumeContents, 0);
  for (std::size_t i = placements.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(rng.below(i));
    std::swap(placements[i - 1], placements[j]);
  }
  return placements;
}

std::vector<int> draw_validation_ids(int n_volumes, double val_split, std::uint64_t seed) {
  // Same rounding as the reference's int(V * val_split / 100).
  const int n_val = static_cast<int>(std::floor(static_cast<double>(n_volumes) * val_split / 100.0));
  if (n_val < 0 || n_val > n_volumes) {
    throw std::invalid_argument(fmt::format("val_split = {} gives {} validation volumes out of {}; it must be in [0, 100)",
                                            val_split, n_val, n_volumes));
  }

  std::vector<int> ids(static_cast<std::size_t>(n_volumes));
  std::iota(ids.begin(), ids.end(), 0);
  CounterRng rng(seed, RngPurpose::kSplit, 0);
  for (int i = 0; i < n_val; ++i) {
    const auto j = i + static_cast<int>(rng.below(static_cast<std::uint64_t>(n_volumes - i)));
    std::swap(ids[i], ids[j]);
  }
  ids.resize(static_cast<std::size_t>(n_val));
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<std::array<float, 3>> draw_colours(int n_categories, std::uint64_t seed) {
  // 24 bits fill a float32 significand, so a channel is exact and never rounds
  // up to 1.0 (a 53-bit double cast to float can).
  CounterRng rng(seed, RngPurpose::kColours, 0);
  std::vector<std::array<float, 3>> colours(static_cast<std::size_t>(n_categories));
  for (auto& colour : colours) {
    for (float& channel : colour) channel = static_cast<float>(rng.next_u32() >> 8) * 0x1.0p-24f;
  }
  return colours;
}

VolumePlan plan_volumes(const Config& config) {
  VolumePlan plan;
  plan.n_fracts_per_vol = config.n_fracts_per_vol;
  plan.placements = draw_volume_contents(config);

  const auto seed = static_cast<std::uint64_t>(config.seed);
  plan.val_ids = draw_validation_ids(plan.n_volumes(), config.val_split, seed);
  for (int v = 0; v < plan.n_volumes(); ++v) {
    if (!std::binary_search(plan.val_ids.begin(), plan.val_ids.end(), v)) plan.train_ids.push_back(v);
  }

  plan.colours = draw_colours(config.n_categories, seed);
  return plan;
}

std::string volumes_contents_csv(const VolumePlan& plan) {
  std::string text;
  for (int v = 0; v < plan.n_volumes(); ++v) {
    text += std::to_string(v);
    for (const FractalPlacement& placement : plan.volume(v)) {
      text += fmt::format(",{},{}", placement.category, placement.instance);
    }
    text += '\n';
  }
  return text;
}

std::vector<int> mask_values_present(const VolumePlan& plan, std::span<const int> volume_ids) {
  std::set<int> values = {0};
  for (int v : volume_ids) {
    for (const FractalPlacement& placement : plan.volume(v)) values.insert(placement.category + 1);
  }
  return {values.begin(), values.end()};
}

}  // namespace scaffold
