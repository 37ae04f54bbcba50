// Dataset generation and loading: voxelization, volume contents, split,
// colours, rendered volumes and masks, config id, reuse and sample checks.
#include <gtest/gtest.h>
#include <omp.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "log_capture_support.hpp"
#include "core/atomic_file.hpp"
#include "core/config.hpp"
#include "core/hash.hpp"
#include "core/npy.hpp"
#include "core/rng.hpp"
#include "dataset/contents.hpp"
#include "dataset/dataset.hpp"
#include "dataset/render.hpp"
#include "dataset/voxelize.hpp"
#include "fractal/library.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() /
            (std::string("scaffold_test_dataset_") + info->name() + "_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path root_;
};

std::vector<Voxel> voxelize_points(const std::vector<std::array<float, 3>>& points, int grid) {
  return voxelize(points.empty() ? nullptr : points[0].data(), static_cast<std::int64_t>(points.size()), grid);
}

// Scale 4: 16^3 voxels and 16 points per instance.
Config tiny_config(const fs::path& root) {
  Config config;
  config.dataset_dir = (root / "datasets").string();
  config.fract_base_dir = (root / "fractals").string();
  config.seed = 7;
  config.problem_scale = 4;
  config.n_categories = 2;
  config.n_instances_used_per_fractal = 6;
  config.n_fracts_per_vol = 3;
  config.val_split = 50;
  return config;
}

// The hand-made instance (category, instance). Corners (0,0,0) and (16,16,16)
// make every axis span 16 units on a 16-voxel grid, so a point at
// (a + 0.5, b + 0.5, c + 0.5) lands in voxel (a, b, c). The corners land in
// (0,0,0) and (15,15,15).
std::vector<std::array<float, 3>> hand_made_cloud(int category, int instance) {
  std::vector<std::array<float, 3>> points = {{0, 0, 0}, {16, 16, 16}};
  for (int j = 0; j < 14; ++j) {
    const int a = (category * 5 + instance + j) % 14 + 1;
    const int b = (instance * 3 + j) % 14 + 1;
    const int c = j + 1;
    points.push_back({a + 0.5f, b + 0.5f, c + 0.5f});
  }
  return points;
}

// The voxels of hand_made_cloud, worked out from its construction.
std::set<Voxel> hand_made_voxels(int category, int instance) {
  std::set<Voxel> voxels = {{0, 0, 0}, {15, 15, 15}};
  for (int j = 0; j < 14; ++j) {
    voxels.insert({(category * 5 + instance + j) % 14 + 1, (instance * 3 + j) % 14 + 1, j + 1});
  }
  return voxels;
}

// Writes the instance files that the config's volumes use, so that no class
// search runs.
void write_hand_made_library(const Config& config) {
  const FractalLibraryPaths paths = fractal_library_paths(config);
  for (const FractalPlacement& placement : plan_volumes(config).placements) {
    const std::vector<std::array<float, 3>> points = hand_made_cloud(placement.category, placement.instance);
    const fs::path path = instance_path(paths, placement.category, placement.instance);
    if (fs::exists(path)) continue;
    fs::create_directories(path.parent_path());
    write_npy(path, DType::kFloat32, {static_cast<std::int64_t>(points.size()), 3}, points.data());
  }
}

// Rows of volumes_contents.csv as integers.
std::vector<std::vector<int>> read_contents_csv(const fs::path& path) {
  std::vector<std::vector<int>> rows;
  std::istringstream lines(read_file(path));
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<int> row;
    std::istringstream fields(line);
    std::string field;
    while (std::getline(fields, field, ',')) row.push_back(std::stoi(field));
    rows.push_back(row);
  }
  return rows;
}

// Every regular file under `dir`, relative path -> contents.
std::map<std::string, std::string> read_tree(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files[fs::relative(entry.path(), dir).string()] = read_file(entry.path());
  }
  return files;
}

std::map<std::string, fs::file_time_type> write_times(const fs::path& dir) {
  std::map<std::string, fs::file_time_type> times;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) times[entry.path().string()] = entry.last_write_time();
  return times;
}

// ---- voxelize ----

TEST(Voxelize, BoxStaysIsotropicAndCentred) {
  // Box [0,2] x [0,1] x [0,1] on an 8-grid. Ignoring the 1e-6 slack, one unit
  // is 8 / 2 = 4 voxels on every axis: x fills voxels 0..7, while y and z span
  // 4 voxels centred in 8, so they start at voxel 2 and end at 5.
  std::vector<std::array<float, 3>> points;
  for (float x : {0.0f, 2.0f}) {
    for (float y : {0.0f, 1.0f}) {
      for (float z : {0.0f, 1.0f}) points.push_back({x, y, z});
    }
  }
  // (0.625, 0.375, 0.625) -> (2.5, 2 + 1.5, 2 + 2.5) -> voxel (2, 3, 4).
  points.push_back({0.625f, 0.375f, 0.625f});

  const std::vector<Voxel> expected = {{0, 2, 2}, {0, 2, 5}, {0, 5, 2}, {0, 5, 5}, {2, 3, 4},
                                       {7, 2, 2}, {7, 2, 5}, {7, 5, 2}, {7, 5, 5}};
  EXPECT_EQ(voxelize_points(points, 8), expected);

  // Moving the cloud changes nothing: only positions relative to the minimum count.
  for (auto& point : points) {
    point[0] -= 10.0f;
    point[1] += 3.0f;
    point[2] += 100.0f;
  }
  EXPECT_EQ(voxelize_points(points, 8), expected);
}

TEST(Voxelize, SinglePointLandsInCentre) {
  // Zero extent: q = 0 and offset = grid / 2 on every axis.
  EXPECT_EQ(voxelize_points({{3.5f, -2.0f, 7.0f}}, 16), (std::vector<Voxel>{{8, 8, 8}}));
  EXPECT_EQ(voxelize_points({{1.0f, 1.0f, 1.0f}, {1.0f, 1.0f, 1.0f}, {1.0f, 1.0f, 1.0f}}, 8),
            (std::vector<Voxel>{{4, 4, 4}}));
}

TEST(Voxelize, EmptyCloudGivesNoVoxels) { EXPECT_TRUE(voxelize(nullptr, 0, 16).empty()); }

TEST(Voxelize, HugeExtentClipsToLastVoxel) {
  // With extent 2^40, adding 1e-6 no longer changes it, so s = 2^40 / 8 and the
  // far x end gives q = 8 exactly, which is clipped to 7. y spans 4 voxels,
  // centred from voxel 2 to 6.
  const float far = std::ldexp(1.0f, 40);
  const float half = std::ldexp(1.0f, 39);
  EXPECT_EQ(voxelize_points({{0, 0, 0}, {far, half, half}}, 8), (std::vector<Voxel>{{0, 2, 2}, {7, 6, 6}}));
}

TEST(Voxelize, NonFiniteCoordinateRejected) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, inf, -inf}) {
    try {
      voxelize_points({{0, 0, 0}, {1, bad, 0}}, 8);
      FAIL() << "a non-finite coordinate was accepted";
    } catch (const std::invalid_argument& error) {
      EXPECT_NE(std::string(error.what()).find("point 1"), std::string::npos) << error.what();
      EXPECT_NE(std::string(error.what()).find("axis 1"), std::string::npos) << error.what();
    }
  }
}

TEST(Voxelize, GridBelowOneRejected) { EXPECT_THROW(voxelize_points({{0, 0, 0}}, 0), std::invalid_argument); }

// ---- volume contents, split, colours ----

TEST(VolumeContents, DistinctInstancesUpTo145) {
  Config config;
  config.n_categories = 3;
  config.n_instances_used_per_fractal = 145;  // rounded down to 144
  config.n_fracts_per_vol = 3;
  ASSERT_EQ(instances_used_per_category(config), 144);

  const std::vector<FractalPlacement> placements = draw_volume_contents(config);
  ASSERT_EQ(placements.size(), 3u * 144u);

  std::map<int, std::set<int>> instances;
  std::map<int, int> counts;
  for (const FractalPlacement& placement : placements) {
    ASSERT_GE(placement.instance, 0);
    ASSERT_LT(placement.instance, kInstancesPerClass);
    instances[placement.category].insert(placement.instance);
    ++counts[placement.category];
  }
  ASSERT_EQ(instances.size(), 3u);
  for (int category = 0; category < 3; ++category) {
    EXPECT_EQ(counts[category], 144);
    EXPECT_EQ(instances[category].size(), 144u) << "category " << category << " repeats an instance";
  }

  // The shuffle must break the category-major order of the draws.
  const auto first_block_end = placements.begin() + 144;
  EXPECT_FALSE(std::all_of(placements.begin(), first_block_end, [](const auto& p) { return p.category == 0; }));
}

TEST(VolumeContents, ReusesInstancesPast145) {
  // 300 = 145 + 145 + 10: two full permutations of 0..144, then 10 more ids.
  Config config;
  config.n_categories = 2;
  config.n_instances_used_per_fractal = 300;
  config.n_fracts_per_vol = 3;
  const std::vector<FractalPlacement> placements = draw_volume_contents(config);
  ASSERT_EQ(placements.size(), 600u);

  for (int category = 0; category < 2; ++category) {
    std::map<int, int> uses;
    for (const FractalPlacement& placement : placements) {
      if (placement.category == category) ++uses[placement.instance];
    }
    EXPECT_EQ(uses.size(), 145u);
    int used_three_times = 0;
    for (const auto& [instance, count] : uses) {
      EXPECT_GE(count, 2) << "instance " << instance;
      EXPECT_LE(count, 3) << "instance " << instance;
      if (count == 3) ++used_three_times;
    }
    EXPECT_EQ(used_three_times, 10);
  }
}

TEST(VolumeContents, VolumeCountAndRounding) {
  Config config;
  config.n_categories = 5;
  config.n_instances_used_per_fractal = 10;
  config.n_fracts_per_vol = 4;  // 10 -> 8 per category, 5 * 8 / 4 = 10 volumes
  const VolumePlan plan = plan_volumes(config);
  EXPECT_EQ(instances_used_per_category(config), 8);
  EXPECT_EQ(plan.n_volumes(), 10);
  EXPECT_EQ(plan.placements.size(), 40u);
  EXPECT_EQ(plan.volume(9).size(), 4u);

  // The default config: 5 * 144 / 3 = 240 volumes, 72 of them validation.
  const VolumePlan default_plan = plan_volumes(Config{});
  EXPECT_EQ(default_plan.n_volumes(), 240);
  EXPECT_EQ(default_plan.val_ids.size(), 72u);
  EXPECT_EQ(default_plan.train_ids.size(), 168u);
}

TEST(VolumeContents, DependsOnSeedOnly) {
  Config config;
  const std::vector<FractalPlacement> first = draw_volume_contents(config);
  const std::vector<FractalPlacement> second = draw_volume_contents(config);
  ASSERT_EQ(first.size(), second.size());
  EXPECT_TRUE(std::equal(first.begin(), first.end(), second.begin(),
                         [](const auto& a, const auto& b) { return a.category == b.category && a.instance == b.instance; }));

  config.seed = 43;
  const std::vector<FractalPlacement> other = draw_volume_contents(config);
  EXPECT_FALSE(std::equal(first.begin(), first.end(), other.begin(),
                          [](const auto& a, const auto& b) { return a.category == b.category && a.instance == b.instance; }));
}

TEST(VolumeContents, InvalidKeysRejected) {
  Config config;
  config.n_instances_used_per_fractal = 2;  // below n_fracts_per_vol = 3
  EXPECT_THROW(draw_volume_contents(config), ConfigError);

  config = Config{};
  config.dc_num_shards = {1, 2, 1};
  try {
    draw_volume_contents(config);
    FAIL() << "sharded volumes were accepted";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("dc_num_shards"), std::string::npos) << error.what();
  }

  config = Config{};
  config.val_split = 100;
  EXPECT_THROW(draw_volume_contents(config), ConfigError);
}

TEST(VolumeContents, CsvRows) {
  Config config;
  config.n_categories = 2;
  config.n_instances_used_per_fractal = 6;
  config.n_fracts_per_vol = 3;
  const VolumePlan plan = plan_volumes(config);
  ASSERT_EQ(plan.n_volumes(), 4);

  const std::string csv = volumes_contents_csv(plan);
  std::istringstream lines(csv);
  std::string line;
  int v = 0;
  while (std::getline(lines, line)) {
    std::string expected = std::to_string(v);
    for (const FractalPlacement& placement : plan.volume(v)) {
      expected += "," + std::to_string(placement.category) + "," + std::to_string(placement.instance);
    }
    EXPECT_EQ(line, expected);
    ++v;
  }
  EXPECT_EQ(v, 4);
  EXPECT_EQ(csv.back(), '\n');
}

TEST(Split, SizesAndDisjointness) {
  const std::vector<int> val = draw_validation_ids(240, 30, 42);
  ASSERT_EQ(val.size(), 72u);
  EXPECT_TRUE(std::is_sorted(val.begin(), val.end()));
  EXPECT_EQ(std::set<int>(val.begin(), val.end()).size(), 72u);
  EXPECT_GE(val.front(), 0);
  EXPECT_LT(val.back(), 240);

  // floor(10 * 12.5 / 100) = 1, floor(7 * 30 / 100) = 2, 0% gives none.
  EXPECT_EQ(draw_validation_ids(10, 12.5, 1).size(), 1u);
  EXPECT_EQ(draw_validation_ids(7, 30, 1).size(), 2u);
  EXPECT_TRUE(draw_validation_ids(10, 0, 1).empty());

  Config config;
  const VolumePlan plan = plan_volumes(config);
  std::vector<int> all = plan.train_ids;
  all.insert(all.end(), plan.val_ids.begin(), plan.val_ids.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), 240u);
  for (int i = 0; i < 240; ++i) ASSERT_EQ(all[i], i) << "volume " << i << " is missing or in both splits";
  EXPECT_TRUE(std::is_sorted(plan.train_ids.begin(), plan.train_ids.end()));
}

TEST(Colours, DrawnFromColourStream) {
  const std::vector<std::array<float, 3>> colours = draw_colours(4, 42);
  ASSERT_EQ(colours.size(), 4u);

  // Each channel is the top 24 bits of one 32-bit word, scaled by 2^-24.
  CounterRng rng(42, RngPurpose::kColours, 0);
  for (const auto& colour : colours) {
    for (float channel : colour) {
      const float expected = static_cast<float>(rng.next_u32() >> 8) / 16777216.0f;
      EXPECT_EQ(channel, expected);
      EXPECT_GE(channel, 0.0f);
      EXPECT_LT(channel, 1.0f);
    }
  }
}

// ---- rendering ----

TEST(RenderVolume, LaterFractalsOverwriteEarlierOnes) {
  const std::vector<std::array<float, 3>> colours = {{0.25f, 0.5f, 0.75f}, {0.125f, 0.375f, 0.625f}};
  const std::vector<PlacedFractal> fractals = {{0, {{0, 0, 0}, {1, 2, 3}}}, {1, {{1, 2, 3}, {3, 3, 3}}}};
  std::vector<float> volume;
  std::vector<std::uint16_t> mask;
  render_volume(4, fractals, colours, volume, mask);
  ASSERT_EQ(volume.size(), 3u * 64u);
  ASSERT_EQ(mask.size(), 64u);

  // [3, D, H, W]: voxel (x, y, z) of channel c is at c * 64 + x * 16 + y * 4 + z.
  const auto at = [](int x, int y, int z) { return x * 16 + y * 4 + z; };
  EXPECT_EQ(mask[at(0, 0, 0)], 1);
  EXPECT_EQ(mask[at(1, 2, 3)], 2) << "the second fractal must win the shared voxel";
  EXPECT_EQ(mask[at(3, 3, 3)], 2);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(volume[c * 64 + at(0, 0, 0)], colours[0][c]);
    EXPECT_EQ(volume[c * 64 + at(1, 2, 3)], colours[1][c]);
    EXPECT_EQ(volume[c * 64 + at(3, 3, 3)], colours[1][c]);
  }

  int foreground = 0;
  for (int i = 0; i < 64; ++i) {
    if (mask[i] == 0) {
      for (int c = 0; c < 3; ++c) EXPECT_EQ(volume[c * 64 + i], 0.0f) << "background voxel " << i;
    } else {
      ++foreground;
    }
  }
  EXPECT_EQ(foreground, 3);
}

TEST(RenderVolume, UnknownCategoryRejected) {
  std::vector<float> volume;
  std::vector<std::uint16_t> mask;
  const std::vector<PlacedFractal> fractals = {{2, {{0, 0, 0}}}};
  const std::vector<std::array<float, 3>> colours = {{0, 0, 0}, {1, 1, 1}};
  EXPECT_THROW(render_volume(4, fractals, colours, volume, mask), std::out_of_range);
}

// ---- config id ----

TEST(ConfigId, MatchesPythonJsonOfDefaults) {
  // json.dumps(subset, separators=(",", ":"), sort_keys=True) of the defaults.
  const std::string expected_json =
      R"({"dataset_format_version":5,"dc_num_shards":[1,1,1],"dc_shard_dims":[2,3,4],"n_categories":5,)"
      R"("n_fracts_per_vol":3,"n_instances_used_per_fractal":145,"problem_scale":7,"seed":42,"val_split":30,)"
      R"("variance_threshold":0.15})";
  const Config config;
  EXPECT_EQ(dataset_config_json(config), expected_json);
  EXPECT_EQ(dataset_config_id(config), sha256_hex(expected_json).substr(0, 12));
  // hashlib.sha256(expected_json.encode()).hexdigest()[:12], computed in Python.
  EXPECT_EQ(dataset_config_id(config), "18d3c8efe010");
}

TEST(ConfigId, SortsShardPairsAndPrintsFloatsAsPython) {
  Config config;
  config.seed = 7;
  config.dc_shard_dims = {4, 2, 3};
  config.dc_num_shards = {2, 1, 3};  // pairs (4,2) (2,1) (3,3) sorted by dim
  config.val_split = 12.5;
  config.variance_threshold = 0.1 + 0.2;
  const std::string expected_json =
      R"({"dataset_format_version":5,"dc_num_shards":[1,3,2],"dc_shard_dims":[2,3,4],"n_categories":5,)"
      R"("n_fracts_per_vol":3,"n_instances_used_per_fractal":145,"problem_scale":7,"seed":7,"val_split":12.5,)"
      R"("variance_threshold":0.30000000000000004})";
  EXPECT_EQ(dataset_config_json(config), expected_json);
  EXPECT_EQ(dataset_config_id(config), "c384ef71e546");
}

TEST(ConfigId, ChangesWithDatasetKeysOnly) {
  const Config base;
  Config same;
  same.epochs = 5;  // training keys do not define the dataset
  same.dataset_dir = "elsewhere";
  EXPECT_EQ(dataset_config_id(base), dataset_config_id(same));

  Config seed = base;
  seed.seed = 43;
  Config scale = base;
  scale.problem_scale = 6;
  EXPECT_NE(dataset_config_id(seed), dataset_config_id(base));
  EXPECT_NE(dataset_config_id(scale), dataset_config_id(base));
  EXPECT_NE(dataset_config_id(seed), dataset_config_id(scale));
  EXPECT_EQ(dataset_config_id(base).size(), 12u);
}

// ---- datasets on disk ----

TEST_F(DatasetTest, VolumesAndMasksMatchHandMadeInstances) {
  const Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo info = ensure_dataset(config);

  // 2 categories * 6 instances / 3 per volume = 4 volumes, half for validation.
  EXPECT_EQ(info.vol_size, 16);
  EXPECT_EQ(info.n_classes, 3);
  EXPECT_EQ(info.train_ids.size(), 2u);
  EXPECT_EQ(info.val_ids.size(), 2u);
  EXPECT_EQ(info.config_id, dataset_config_id(config));
  EXPECT_EQ(info.dir.parent_path(), fs::path(config.dataset_dir) / info.config_id);

  const std::vector<std::vector<int>> rows = read_contents_csv(info.dir / "volumes_contents.csv");
  ASSERT_EQ(rows.size(), 4u);
  const std::vector<std::array<float, 3>> colours = draw_colours(2, 7);
  const std::set<int> val_ids(info.val_ids.begin(), info.val_ids.end());

  for (const auto& row : rows) {
    ASSERT_EQ(row.size(), 7u);
    const int v = row[0];
    const Split split = val_ids.count(v) ? Split::kValidation : Split::kTraining;
    const Sample sample = load_sample(info, split, v);
    ASSERT_EQ(sample.volume.size(), 3u * 4096u);
    ASSERT_EQ(sample.mask.size(), 4096u);

    // Paint the hand-worked voxels in file order: later fractals win.
    std::vector<int> expected_mask(4096, 0);
    for (int f = 0; f < 3; ++f) {
      const int category = row[1 + 2 * f];
      const int instance = row[2 + 2 * f];
      for (const Voxel& voxel : hand_made_voxels(category, instance)) {
        expected_mask[(voxel[0] * 16 + voxel[1]) * 16 + voxel[2]] = category + 1;
      }
    }
    EXPECT_EQ(sample.mask[0], row[5] + 1) << "corner (0,0,0) belongs to the last fractal";
    EXPECT_EQ(sample.mask[4095], row[5] + 1) << "corner (15,15,15) belongs to the last fractal";

    for (int i = 0; i < 4096; ++i) {
      ASSERT_EQ(sample.mask[i], expected_mask[i]) << "volume " << v << " voxel " << i;
      for (int c = 0; c < 3; ++c) {
        const float expected = expected_mask[i] == 0 ? 0.0f : colours[expected_mask[i] - 1][c];
        ASSERT_EQ(sample.volume[c * 4096 + i], expected) << "volume " << v << " channel " << c << " voxel " << i;
      }
    }
  }

  // Split files: background plus the categories placed in each split.
  for (const auto& [file, ids] : {std::pair{"train_unique_mask_vals.yaml", &info.train_ids},
                                  std::pair{"val_unique_mask_vals.yaml", &info.val_ids}}) {
    std::set<int> labels = {0};
    for (const auto& row : rows) {
      if (std::find(ids->begin(), ids->end(), row[0]) == ids->end()) continue;
      for (int f = 0; f < 3; ++f) labels.insert(row[1 + 2 * f] + 1);
    }
    std::string expected = "mask_values: [";
    for (int label : labels) expected += (label == 0 ? "" : ", ") + std::to_string(label);
    EXPECT_EQ(read_file(info.dir / file), expected + "]\n") << file;
  }
  const std::string meta = read_file(info.dir / "meta.yaml");
  EXPECT_NE(meta.find("config_id: \"" + info.config_id + "\""), std::string::npos) << meta;
  EXPECT_NE(meta.find("dataset_format_version: 5"), std::string::npos) << meta;
  EXPECT_NE(meta.find("n_volumes: 4"), std::string::npos) << meta;
}

TEST_F(DatasetTest, NumpyOpensEveryFile) {
  if (std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  }
  const Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo info = ensure_dataset(config);

  const fs::path script = root_ / "check.py";
  write_file_atomic(script,
                    "import sys, pathlib, numpy as np\n"
                    "n = 0\n"
                    "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.npy')):\n"
                    "    a = np.load(p)\n"
                    "    if p.name.endswith('_mask.npy'):\n"
                    "        assert a.dtype == np.uint16 and a.shape == (16, 16, 16), (p, a.dtype, a.shape)\n"
                    "        assert int(a.max()) <= 2, p\n"
                    "    else:\n"
                    "        assert a.dtype == np.float32 and a.shape == (3, 16, 16, 16), (p, a.dtype, a.shape)\n"
                    "        assert float(a.max()) < 1.0 and float(a.min()) >= 0.0, p\n"
                    "    n += 1\n"
                    "print('checked', n)\n");
  const fs::path output = root_ / "check.out";
  const std::string command =
      "/usr/bin/python3 " + script.string() + " " + info.dir.string() + " > " + output.string() + " 2>&1";
  EXPECT_EQ(std::system(command.c_str()), 0) << read_file(output);
  EXPECT_EQ(read_file(output), "checked 8\n");
}

TEST_F(DatasetTest, ByteIdenticalForOneAndTwoThreads) {
  Config config = tiny_config(root_);
  config.n_instances_used_per_fractal = 30;  // 20 volumes, enough to share out
  write_hand_made_library(config);

  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  config.dataset_dir = (root_ / "one_thread").string();
  const DatasetInfo one = ensure_dataset(config);
  omp_set_num_threads(2);
  config.dataset_dir = (root_ / "two_threads").string();
  const DatasetInfo two = ensure_dataset(config);
  omp_set_num_threads(saved_threads);

  std::map<std::string, std::string> one_files = read_tree(one.dir);
  std::map<std::string, std::string> two_files = read_tree(two.dir);
  one_files.erase("meta.yaml");  // contains the creation time
  two_files.erase("meta.yaml");
  EXPECT_EQ(one_files.size(), 2u * 20u + 3u);
  ASSERT_EQ(one_files.size(), two_files.size());
  for (const auto& [name, bytes] : one_files) {
    ASSERT_TRUE(two_files.count(name)) << name;
    EXPECT_TRUE(two_files[name] == bytes) << name << " differs between 1 and 2 threads";
  }
}

TEST_F(DatasetTest, SecondCallReusesWithoutWriting) {
  const Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo first = ensure_dataset(config);
  const auto times_before = write_times(config.dataset_dir);

  const DatasetInfo second = ensure_dataset(config);
  EXPECT_EQ(second.dir, first.dir);
  EXPECT_EQ(second.train_ids, first.train_ids);
  EXPECT_EQ(second.val_ids, first.val_ids);
  EXPECT_EQ(write_times(config.dataset_dir), times_before) << "reuse wrote or touched files";

  // A different seed or val_split is a different dataset.
  Config other_seed = config;
  other_seed.seed = 8;
  write_hand_made_library(other_seed);
  const DatasetInfo reseeded = ensure_dataset(other_seed);
  EXPECT_NE(reseeded.config_id, first.config_id);
  EXPECT_NE(reseeded.dir.parent_path(), first.dir.parent_path());

  Config other_split = config;
  other_split.val_split = 25;
  const DatasetInfo resplit = ensure_dataset(other_split);
  EXPECT_NE(resplit.config_id, first.config_id);
  EXPECT_EQ(resplit.val_ids.size(), 1u);
}

TEST_F(DatasetTest, IncompleteOrStagedDatasetNotReused) {
  const Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo first = ensure_dataset(config);

  // A staging directory is never a candidate, even when complete and named newest.
  const fs::path staged = first.dir.parent_path() / ".tmp_99991231-235959_1_deadbeef";
  fs::copy(first.dir, staged, fs::copy_options::recursive);
  EXPECT_EQ(ensure_dataset(config).dir, first.dir);

  // A staging directory untouched for over 24 h belongs to a dead writer.
  const fs::path abandoned = first.dir.parent_path() / ".tmp_20000101-000000_1_00000000";
  fs::copy(first.dir, abandoned, fs::copy_options::recursive);
  const auto long_ago = fs::file_time_type::clock::now() - std::chrono::hours(25);
  for (const auto& entry : fs::recursive_directory_iterator(abandoned)) fs::last_write_time(entry.path(), long_ago);
  fs::last_write_time(abandoned, long_ago);

  // Without one of its masks the dataset is rebuilt into a new directory.
  fs::remove(mask_path(first, Split::kTraining, first.train_ids.front()));
  const DatasetInfo rebuilt = ensure_dataset(config);
  EXPECT_NE(rebuilt.dir, first.dir);
  EXPECT_EQ(rebuilt.config_id, first.config_id);
  EXPECT_TRUE(fs::is_regular_file(mask_path(rebuilt, Split::kTraining, rebuilt.train_ids.front())));
  EXPECT_TRUE(fs::exists(staged)) << "a fresh staging directory must not be removed";
  EXPECT_FALSE(fs::exists(abandoned)) << "a staging directory unchanged for 25 h must be removed";
}

TEST_F(DatasetTest, CommitCheckedOnlyWhenEnforced) {
  Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo first = ensure_dataset(config);

  // Pretend another commit made the dataset.
  std::string meta = read_file(first.dir / "meta.yaml");
  const std::size_t start = meta.find("code_commit: ");
  ASSERT_NE(start, std::string::npos);
  const std::size_t end = meta.find('\n', start);
  meta.replace(start, end - start, "code_commit: \"another-commit\"");
  write_file_atomic(first.dir / "meta.yaml", meta);

  EXPECT_EQ(ensure_dataset(config).dir, first.dir);
  config.dataset_reuse_enforce_commit_id = true;
  EXPECT_NE(ensure_dataset(config).dir, first.dir);
}

TEST_F(DatasetTest, OpenListsIdsNumerically) {
  Config config = tiny_config(root_);
  config.n_instances_used_per_fractal = 36;  // 24 volumes: ids 2 and 10 both present
  write_hand_made_library(config);
  const DatasetInfo built = ensure_dataset(config);
  const DatasetInfo opened = open_dataset(built.dir);

  const VolumePlan plan = plan_volumes(config);
  EXPECT_EQ(opened.train_ids, plan.train_ids);
  EXPECT_EQ(opened.val_ids, plan.val_ids);
  EXPECT_EQ(opened.train_ids.size() + opened.val_ids.size(), 24u);
  EXPECT_EQ(opened.vol_size, 16);
  EXPECT_EQ(opened.n_classes, 3);
}

TEST_F(DatasetTest, OpenRejectsBrokenDirectories) {
  const Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo info = ensure_dataset(config);

  EXPECT_THROW(open_dataset(root_ / "nothing_here"), DatasetError);

  // A stray file in a split directory.
  const fs::path stray = info.dir / "volumes" / "training" / "notes.npy";
  write_file_atomic(stray, std::string("x"));
  try {
    open_dataset(info.dir);
    FAIL() << "a stray file was accepted";
  } catch (const DatasetError& error) {
    EXPECT_NE(std::string(error.what()).find("notes.npy"), std::string::npos) << error.what();
  }
  fs::remove(stray);

  // A volume without its mask.
  const fs::path mask = mask_path(info, Split::kValidation, info.val_ids.front());
  fs::remove(mask);
  try {
    open_dataset(info.dir);
    FAIL() << "a volume without a mask was accepted";
  } catch (const DatasetError& error) {
    EXPECT_NE(std::string(error.what()).find(mask.string()), std::string::npos) << error.what();
  }
}

TEST_F(DatasetTest, LoadSampleRejectsLabelOutOfRange) {
  const Config config = tiny_config(root_);
  write_hand_made_library(config);
  const DatasetInfo info = ensure_dataset(config);
  const int v = info.train_ids.front();
  const fs::path mask = mask_path(info, Split::kTraining, v);

  // n_categories = 2, so labels 0..2 are valid and 3 is not.
  std::vector<std::uint16_t> labels(4096, 0);
  labels[100] = 2;
  write_npy(mask, DType::kUInt16, {16, 16, 16}, labels.data());
  EXPECT_EQ(load_sample(info, Split::kTraining, v).mask[100], 2);

  labels[123] = 3;
  write_npy(mask, DType::kUInt16, {16, 16, 16}, labels.data());
  try {
    load_sample(info, Split::kTraining, v);
    FAIL() << "label 3 was accepted with 2 categories";
  } catch (const DatasetError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(mask.string()), std::string::npos) << message;
    EXPECT_NE(message.find("label 3"), std::string::npos) << message;
    EXPECT_NE(message.find("0..2"), std::string::npos) << message;
    EXPECT_NE(message.find("regenerate"), std::string::npos) << message;
  }

  // A mask of the wrong dtype fails the header check.
  std::vector<std::int16_t> signed_labels(4096, 0);
  write_npy(mask, DType::kInt16, {16, 16, 16}, signed_labels.data());
  EXPECT_THROW(load_sample(info, Split::kTraining, v), NpyError);
}

using scaffold_test::LogCapture;
using scaffold_test::replace_once;

// One way to damage a finished dataset: the file it damages and the text the warning must contain.
struct Damage {
  std::string name;
  std::function<fs::path(const DatasetInfo&)> apply;
  std::string defect;
};

std::vector<Damage> damages() {
  const auto first_volume = [](const DatasetInfo& info) { return volume_path(info, Split::kTraining, info.train_ids[0]); };
  const auto first_mask = [](const DatasetInfo& info) { return mask_path(info, Split::kValidation, info.val_ids[0]); };
  const auto rewrite = [](const fs::path& path, const std::string& from, const std::string& to) {
    write_file_atomic(path, replace_once(read_file(path), from, to));
    return path;
  };
  return {
      {"empty meta.yaml",
       [](const DatasetInfo& info) {
         write_file_atomic(info.dir / "meta.yaml", std::string_view());
         return info.dir / "meta.yaml";
       },
       "is not a YAML mapping"},
      {"corrupt meta.yaml",
       [](const DatasetInfo& info) {
         write_file_atomic(info.dir / "meta.yaml", std::string_view("config_id: [\"unclosed\n\x01\x02"));
         return info.dir / "meta.yaml";
       },
       "cannot parse"},
      {"meta.yaml without config_id",
       [=](const DatasetInfo& info) { return rewrite(info.dir / "meta.yaml", "config_id:", "other_key:"); },
       "has no key 'config_id'"},
      {"missing volume",
       [=](const DatasetInfo& info) {
         fs::remove(first_volume(info));
         return first_volume(info);
       },
       "No such file or directory"},
      {"volume with bad magic", [=](const DatasetInfo& info) { return rewrite(first_volume(info), "NUMPY", "NUMPX"); },
       "missing the \\x93NUMPY magic string"},
      {"volume in Fortran order", [=](const DatasetInfo& info) { return rewrite(first_volume(info), "False", "True "); },
       "array is in Fortran order"},
      {"volume header lies about size",
       [=](const DatasetInfo& info) { return rewrite(first_volume(info), "(3, 16, 16, 16)", "(3, 16, 16, 17)"); },
       "file truncated"},
      {"truncated mask",
       [=](const DatasetInfo& info) {
         const std::string bytes = read_file(first_mask(info));
         write_file_atomic(first_mask(info), std::string_view(bytes).substr(0, bytes.size() - 100));
         return first_mask(info);
       },
       "file truncated"},
      {"mask labelled int16", [=](const DatasetInfo& info) { return rewrite(first_mask(info), "<u2", "<i2"); },
       "dtype is <i2, expected <u2"},
      {"edited volumes_contents.csv",
       [=](const DatasetInfo& info) { return rewrite(info.dir / "volumes_contents.csv", "0,", "9,"); },
       "does not list the volumes that this config defines"},
  };
}

TEST_F(DatasetTest, BrokenCachedDatasetRegeneratedWithWarning) {
  const Config base = tiny_config(root_);
  write_hand_made_library(base);

  for (const Damage& damage : damages()) {
    SCOPED_TRACE(damage.name);
    Config config = base;
    config.dataset_dir = (root_ / "datasets" / damage.name).string();
    const DatasetInfo first = ensure_dataset(config);
    std::map<std::string, std::string> expected = read_tree(first.dir);
    expected.erase("meta.yaml");
    const fs::path damaged = damage.apply(first);

    const LogCapture log;
    const DatasetInfo rebuilt = ensure_dataset(config);
    EXPECT_NE(rebuilt.dir, first.dir);
    const std::string warning = "[warning] not reusing dataset " + first.dir.string() + ", which will be regenerated: ";
    const std::size_t line = log.text().find(warning);
    ASSERT_NE(line, std::string::npos) << log.text();
    const std::string rest = log.text().substr(line, log.text().find('\n', line) - line);
    EXPECT_NE(rest.find(damaged.string()), std::string::npos) << "the warning does not name " << damaged << ": " << rest;
    EXPECT_NE(rest.find(damage.defect), std::string::npos) << rest;

    std::map<std::string, std::string> files = read_tree(rebuilt.dir);
    files.erase("meta.yaml");
    EXPECT_TRUE(files == expected) << "the regenerated dataset differs from the first build";
  }
}

TEST_F(DatasetTest, OpenRejectsHostileMetaAndMissingVolume) {
  const Config config = tiny_config(root_);
  write_hand_made_library(config);

  // An explicitly opened dataset is not regenerated: each defect is one error naming the file.
  for (const Damage& damage : damages()) {
    if (damage.name.find("meta.yaml") == std::string::npos && damage.name != "missing volume") continue;
    SCOPED_TRACE(damage.name);
    Config own = config;
    own.dataset_dir = (root_ / "datasets" / damage.name).string();
    const DatasetInfo info = ensure_dataset(own);
    const fs::path damaged = damage.apply(info);
    try {
      open_dataset(info.dir);
      ADD_FAILURE() << "opened a dataset with " << damage.name;
    } catch (const DatasetError& error) {
      const std::string what = error.what();
      EXPECT_NE(what.find(damaged.string()), std::string::npos) << what;
      EXPECT_NE(what.find("run the benchmark again"), std::string::npos) << what;
    }
  }
}

TEST_F(DatasetTest, GeneratesFractalLibraryWhenMissing) {
  // End to end: no instance files exist, so ensure_dataset runs the class search.
  const Config config = tiny_config(root_);
  const DatasetInfo info = ensure_dataset(config);
  const FractalLibraryPaths library = fractal_library_paths(config);
  for (int category = 0; category < config.n_categories; ++category) {
    EXPECT_TRUE(fs::is_regular_file(instance_path(library, category, 0))) << "category " << category;
  }

  ASSERT_EQ(info.train_ids.size() + info.val_ids.size(), 4u);
  for (int v : info.train_ids) {
    const Sample sample = load_sample(info, Split::kTraining, v);
    const auto foreground = std::count_if(sample.mask.begin(), sample.mask.end(), [](auto label) { return label > 0; });
    EXPECT_GT(foreground, 0) << "volume " << v << " is empty";
    EXPECT_LE(foreground, 3 * config.point_num()) << "volume " << v;
  }
}

}  // namespace
}  // namespace scaffold
