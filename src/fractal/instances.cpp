#include "fractal/instances.hpp"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>

#include "core/atomic_file.hpp"
#include "core/npy.hpp"
#include "core/progress.hpp"
#include "core/trace.hpp"

namespace scaffold {
namespace {

// 0.4 .. 1.6 in steps of 0.1, written as literals so that each weight is the
// double nearest to its decimal value, as when the table is read from text.
constexpr std::array<double, 13> kScalesWithOne = {0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6};
constexpr std::array<double, 12> kScalesWithoutOne = {0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6};

std::array<InstanceWeights, kInstancesPerClass> build_weight_table() {
  std::array<InstanceWeights, kInstancesPerClass> table;
  for (InstanceWeights& row : table) row.fill(1.0);

  for (std::size_t r = 0; r < kScalesWithOne.size(); ++r) table[r][0] = kScalesWithOne[r];

  // The PC-FractalDB weights_ins145.csv used by the reference has 0.6 at row
  // 108 (parameter i), a repeat of row 99. This table follows the rule and
  // has 1.6 there.
  for (std::size_t p = 1; p < 12; ++p) {
    for (std::size_t s = 0; s < kScalesWithoutOne.size(); ++s) {
      table[13 + 12 * (p - 1) + s][p] = kScalesWithoutOne[s];
    }
  }
  return table;
}

std::uint64_t instance_item(int category, int instance) {
  return (static_cast<std::uint64_t>(category) << 20) | static_cast<std::uint64_t>(instance);
}

}  // namespace

const std::array<InstanceWeights, kInstancesPerClass>& instance_weight_table() {
  static const std::array<InstanceWeights, kInstancesPerClass> table = build_weight_table();
  return table;
}

InstanceWeights attenuate_weights(const InstanceWeights& weights, double factor) {
  if (factor == 1.0) return weights;

  InstanceWeights result;
  result.fill(1.0);
  if (factor == 0.0) return result;
  for (std::size_t i = 0; i < weights.size(); ++i) result[i] = 1.0 + (weights[i] - 1.0) * factor;
  return result;
}

Ifs apply_weights(const Ifs& ifs, const InstanceWeights& weights) {
  Ifs result = ifs;
  for (AffineMap& map : result.maps) {
    for (std::size_t i = 0; i < 9; ++i) map.matrix[i] *= weights[i];
    for (std::size_t i = 0; i < 3; ++i) map.translation[i] *= weights[9 + i];
  }
  return result;
}

Instance make_instance(const Ifs& class_ifs, int category, int instance, std::uint64_t seed, std::int64_t point_num) {
  if (instance < 0 || instance >= kInstancesPerClass) {
    throw std::out_of_range("instance index " + std::to_string(instance) + " of class " + std::to_string(category) +
                            " is outside 0.." + std::to_string(kInstancesPerClass - 1));
  }
  const InstanceWeights& weights = instance_weight_table()[static_cast<std::size_t>(instance)];

  for (double factor : kAttenuationFactors) {
    const Ifs ifs = apply_weights(class_ifs, attenuate_weights(weights, factor));
    CounterRng rng(seed, RngPurpose::kInstancePoints, instance_item(category, instance));
    const PointCloud cloud = generate_points(ifs, point_num, rng);
    if (cloud.runaway) continue;

    // Coordinates within +-1e10 stay finite in float32 (max about 3.4e38).
    Instance result;
    result.attenuation = factor;
    result.xyz.assign(cloud.xyz.begin(), cloud.xyz.end());
    return result;
  }

  throw std::runtime_error("instance " + std::to_string(instance) + " of class " + std::to_string(category) +
                           " runs away (a coordinate exceeds 1e10 or is not finite) even with all weights 1, so the "
                           "class parameters themselves are unusable; delete that class CSV or set "
                           "datagen_from_scratch: 1");
}

InstanceStats generate_instances(const FractalLibraryPaths& paths, const Config& config,
                                 const std::vector<Ifs>& classes, const RankShare& share) {
  const auto started = std::chrono::steady_clock::now();
  const std::int64_t point_num = config.point_num();
  const auto seed = static_cast<std::uint64_t>(config.seed);
  const auto n_classes = static_cast<std::int64_t>(classes.size());
  const std::int64_t n_items = n_classes * kInstancesPerClass;

  for (int c = 0; c < n_classes; ++c) std::filesystem::create_directories(instance_path(paths, c, 0).parent_path());

  std::atomic<std::int64_t> written{0}, reused{0}, regenerated{0}, attenuated{0};
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n_items));
  const TraceRegion region("instances");
  Progress progress("instances", n_items, "instances");

#pragma omp parallel for schedule(dynamic)
  for (std::int64_t item = 0; item < n_items; ++item) {
    if (!share.owns(item)) continue;
    const int c = static_cast<int>(item / kInstancesPerClass);
    const int k = static_cast<int>(item % kInstancesPerClass);
    const std::filesystem::path path = instance_path(paths, c, k);
    try {
      bool valid = false;
      if (std::filesystem::exists(path)) {
        try {
          read_instance(path, point_num);
          valid = true;
          ++reused;
        } catch (const std::exception& error) {
          spdlog::warn("regenerating invalid instance file: {}", error.what());
          ++regenerated;
        }
      } else {
        ++written;
      }

      if (!valid) {
        const Instance instance = make_instance(classes[static_cast<std::size_t>(c)], c, k, seed, point_num);
        // Synced all at once below: a killed run leaves whole files (rename),
        // and a file cut short by a power loss fails read_instance's check
        // and is regenerated.
        write_npy(path, DType::kFloat32, {point_num, 3}, instance.xyz.data(), "instance_write", Sync::kDeferred);
        if (instance.attenuation != 1.0) {
          ++attenuated;
          spdlog::debug("instance {} of class {} needed weights attenuated by {}", k, c, instance.attenuation);
        }
      }
    } catch (...) {
      errors[static_cast<std::size_t>(item)] = std::current_exception();
    }
    progress.advance();
  }
  progress.finish();

  // The first failure in (class, instance) order, whatever the thread schedule.
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  if (written.load() + regenerated.load() > 0) sync_filesystem(paths.instances_dir);

  std::int64_t counts[4] = {written.load(), reused.load(), regenerated.load(), attenuated.load()};
  share.sum_in_place(counts, 4);
  InstanceStats stats{counts[0], counts[1], counts[2], counts[3]};
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  spdlog::info("instances: {} classes x {} in {}: {} written, {} reused, {} regenerated, {} attenuated; {:.2f} s",
               n_classes, kInstancesPerClass, paths.instances_dir.string(), stats.written, stats.reused,
               stats.regenerated, stats.attenuated, elapsed_s);
  return stats;
}

}  // namespace scaffold
