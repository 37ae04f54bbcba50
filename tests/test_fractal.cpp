// Tests for the fractal module: the chaos game against hand-computed orbits,
// the variance test on clouds with known variance, the instance weight table,
// the class CSV format, attenuated instance retries, and whole libraries on
// disk (thread-count independence, resuming, reuse and regeneration).
#include "fractal/class_search.hpp"
#include "fractal/ifs.hpp"
#include "fractal/instances.hpp"
#include "fractal/library.hpp"

#include "log_capture_support.hpp"
#include "core/atomic_file.hpp"
#include "core/npy.hpp"

#include <gtest/gtest.h>
#include <omp.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace scaffold {
namespace {

namespace fs = std::filesystem;

// An affine map given as matrix rows and translation.
AffineMap make_map(std::array<double, 9> matrix, std::array<double, 3> translation, double probability) {
  AffineMap map;
  map.matrix = matrix;
  map.translation = translation;
  map.probability = probability;
  return map;
}

constexpr std::array<double, 9> kIdentity = {1, 0, 0, 0, 1, 0, 0, 0, 1};

std::array<double, 9> diagonal(double a, double e, double i) { return {a, 0, 0, 0, e, 0, 0, 0, i}; }

// Parent of the test directories: $TMPDIR when set, else /dev/shm when it is
// usable, because every library file is written with fsync and a disk-backed
// /tmp makes the library tests several times slower.
fs::path test_base_dir() {
  if (std::getenv("TMPDIR") == nullptr && fs::is_directory("/dev/shm") && ::access("/dev/shm", W_OK) == 0) {
    return "/dev/shm";
  }
  return fs::temp_directory_path();
}

// A fresh directory, removed with its contents at the end of the test.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = test_base_dir() /
            ("scaffold-test-fractal-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// ---------------------------------------------------------------------------
// Chaos game

TEST(GeneratePoints, ForcedMapZeroFollowsClosedForm) {
  // Map 0 always applies (U < 1): x_n = x_{n-1} / 2 + t, so x_n = 2t(1 - 2^-n),
  // which is exact in binary for these t. Map 1 would blow up if ever chosen.
  Ifs ifs;
  ifs.maps[0] = make_map(diagonal(0.5, 0.5, 0.5), {1.0, 2.0, -1.0}, 1.0);
  ifs.maps[1] = make_map(diagonal(100, 100, 100), {5, 5, 5}, 0.0);

  CounterRng rng(11, RngPurpose::kClassPoints, 0);
  const PointCloud cloud = generate_points(ifs, 40, rng);

  ASSERT_EQ(cloud.xyz.size(), 120u);
  EXPECT_FALSE(cloud.runaway);
  for (int n = 0; n < 40; ++n) {
    const double factor = 2.0 * (1.0 - std::ldexp(1.0, -n));
    EXPECT_EQ(cloud.xyz[3 * n + 0], 1.0 * factor) << "point " << n;
    EXPECT_EQ(cloud.xyz[3 * n + 1], 2.0 * factor) << "point " << n;
    EXPECT_EQ(cloud.xyz[3 * n + 2], -1.0 * factor) << "point " << n;
  }
}

TEST(GeneratePoints, ForcedMapOneFollowsHandOrbit) {
  // Probability 0 for map 0 means U >= 0 always picks map 1:
  // (x, y, z) -> (y + 1, z, x). From the origin: (1,0,0), (1,0,1), (1,1,1),
  // (2,1,1), (2,1,2), (2,2,2).
  Ifs ifs;
  ifs.maps[0] = make_map(kIdentity, {-50, -50, -50}, 0.0);
  ifs.maps[1] = make_map({0, 1, 0, 0, 0, 1, 1, 0, 0}, {1, 0, 0}, 1.0);

  CounterRng rng(11, RngPurpose::kClassPoints, 1);
  const PointCloud cloud = generate_points(ifs, 7, rng);

  const std::vector<double> expected = {0, 0, 0, 1, 0, 0, 1, 0, 1, 1, 1, 1, 2, 1, 1, 2, 1, 2, 2, 2, 2};
  EXPECT_EQ(cloud.xyz, expected);
  EXPECT_FALSE(cloud.runaway);
}

// Maps that reveal which one was applied: map 0 sends (x, y) to (1, 0) and
// map 1 sends it to (0, 1). Both add one to the previous point's z.
Ifs marker_ifs(double p0) {
  Ifs ifs;
  ifs.maps[0] = make_map({0, 0, 0, 0, 0, 0, 0, 0, 1}, {1, 0, 1}, p0);
  ifs.maps[1] = make_map({0, 0, 0, 0, 0, 0, 0, 0, 1}, {0, 1, 1}, 1.0 - p0);
  return ifs;
}

TEST(GeneratePoints, MapChoiceReplaysUniformDraws) {
  for (double p0 : {0.5, 0.3}) {
    SCOPED_TRACE("p0 = " + std::to_string(p0));
    constexpr int kPoints = 1500;
    CounterRng rng(2024, RngPurpose::kClassPoints, 9);
    const PointCloud cloud = generate_points(marker_ifs(p0), kPoints, rng);
    ASSERT_EQ(cloud.xyz.size(), 3u * kPoints);

    // Point i uses the i-th draw of an identical stream.
    CounterRng replay(2024, RngPurpose::kClassPoints, 9);
    int map0_count = 0;
    EXPECT_EQ(cloud.xyz[0], 0.0);
    EXPECT_EQ(cloud.xyz[1], 0.0);
    EXPECT_EQ(cloud.xyz[2], 0.0);
    for (int i = 1; i < kPoints; ++i) {
      const bool map0 = replay.uniform() < p0;
      map0_count += map0 ? 1 : 0;
      ASSERT_EQ(cloud.xyz[3 * i + 0], map0 ? 1.0 : 0.0) << "point " << i;
      ASSERT_EQ(cloud.xyz[3 * i + 1], map0 ? 0.0 : 1.0) << "point " << i;
      ASSERT_EQ(cloud.xyz[3 * i + 2], static_cast<double>(i)) << "point " << i;
    }

    // Loose bounds (more than 8 standard deviations) that only a wrong
    // comparison or a stuck generator would break.
    const double expected = p0 * (kPoints - 1);
    EXPECT_NEAR(map0_count, expected, 150.0);
  }
}

TEST(GeneratePoints, ShortCounts) {
  CounterRng rng(1, RngPurpose::kClassPoints, 0);
  EXPECT_TRUE(generate_points(marker_ifs(0.5), 0, rng).xyz.empty());
  EXPECT_TRUE(generate_points(marker_ifs(0.5), -3, rng).xyz.empty());

  const PointCloud single = generate_points(marker_ifs(0.5), 1, rng);
  EXPECT_EQ(single.xyz, std::vector<double>({0.0, 0.0, 0.0}));
  EXPECT_FALSE(single.runaway);
}

TEST(GeneratePoints, RunawayAtTheLimit) {
  // x_n = 2 x_{n-1} + 1 = 2^n - 1: point 33 is 8.6e9 (inside 1e10), point 34
  // is 1.7e10 (outside).
  Ifs ifs;
  ifs.maps[0] = make_map(diagonal(2, 2, 2), {1, 1, 1}, 1.0);
  ifs.maps[1] = ifs.maps[0];
  ifs.maps[1].probability = 0.0;

  CounterRng rng_inside(3, RngPurpose::kClassPoints, 0);
  const PointCloud inside = generate_points(ifs, 34, rng_inside);
  EXPECT_FALSE(inside.runaway);
  EXPECT_EQ(inside.xyz[3 * 33], std::ldexp(1.0, 33) - 1.0);

  CounterRng rng_outside(3, RngPurpose::kClassPoints, 0);
  EXPECT_TRUE(generate_points(ifs, 35, rng_outside).runaway);

  CounterRng rng_long(3, RngPurpose::kClassPoints, 0);
  const PointCloud long_cloud = generate_points(ifs, 5000, rng_long);
  EXPECT_TRUE(long_cloud.runaway);
  EXPECT_EQ(long_cloud.xyz.size(), 15000u);
}

TEST(GeneratePoints, NonFiniteCountsAsRunaway) {
  Ifs nan_ifs = marker_ifs(1.0);
  nan_ifs.maps[0].translation[1] = std::numeric_limits<double>::quiet_NaN();
  CounterRng rng(3, RngPurpose::kClassPoints, 0);
  EXPECT_TRUE(generate_points(nan_ifs, 10, rng).runaway);

  Ifs inf_ifs = marker_ifs(1.0);
  inf_ifs.maps[0].translation[2] = std::numeric_limits<double>::infinity();
  CounterRng rng2(3, RngPurpose::kClassPoints, 0);
  EXPECT_TRUE(generate_points(inf_ifs, 10, rng2).runaway);
}

// ---------------------------------------------------------------------------
// Determinants and probabilities

TEST(Probabilities, ProportionalToAbsoluteDeterminants) {
  EXPECT_EQ(determinant(diagonal(2, 3, 4)), 24.0);
  EXPECT_EQ(determinant({0, 1, 0, 1, 0, 0, 0, 0, 6}), -6.0);
  EXPECT_EQ(determinant({1, 2, 3, 4, 5, 6, 7, 8, 10}), -3.0);

  Ifs ifs;
  ifs.maps[0].matrix = diagonal(2, 3, 4);
  ifs.maps[1].matrix = {0, 1, 0, 1, 0, 0, 0, 0, 6};
  assign_probabilities(ifs);
  EXPECT_DOUBLE_EQ(ifs.maps[0].probability, 0.8);
  EXPECT_DOUBLE_EQ(ifs.maps[1].probability, 0.2);
}

TEST(Probabilities, SingularMaps) {
  Ifs one_singular;
  one_singular.maps[0].matrix = {1, 2, 3, 2, 4, 6, 0, 0, 1};  // rows 1 and 2 are parallel
  one_singular.maps[1].matrix = diagonal(0.5, 0.5, 0.5);
  assign_probabilities(one_singular);
  EXPECT_EQ(one_singular.maps[0].probability, 0.0);
  EXPECT_EQ(one_singular.maps[1].probability, 1.0);

  Ifs both_singular;
  both_singular.maps[1].matrix = diagonal(1, 0, 1);
  assign_probabilities(both_singular);
  EXPECT_EQ(both_singular.maps[0].probability, 0.5);
  EXPECT_EQ(both_singular.maps[1].probability, 0.5);
}

TEST(RandomIfs, DrawsEntriesInOrder) {
  CounterRng rng(42, RngPurpose::kClassParams, 5);
  const Ifs ifs = random_ifs(rng);

  CounterRng replay(42, RngPurpose::kClassParams, 5);
  for (const AffineMap& map : ifs.maps) {
    for (double value : map.matrix) EXPECT_EQ(value, replay.uniform(-1.0, 1.0));
    for (double value : map.translation) EXPECT_EQ(value, replay.uniform(-1.0, 1.0));
  }

  const double det0 = std::abs(determinant(ifs.maps[0].matrix));
  const double det1 = std::abs(determinant(ifs.maps[1].matrix));
  EXPECT_DOUBLE_EQ(ifs.maps[0].probability, det0 / (det0 + det1));
  EXPECT_DOUBLE_EQ(ifs.maps[0].probability + ifs.maps[1].probability, 1.0);
}

// ---------------------------------------------------------------------------
// Variance test

// A cloud with `x_values` x `y_values` x `z_values` points on the integer grid:
// each axis then contains m evenly spaced values equally often, whose normalised
// variance (values spread evenly over [-1, 1]) is (m + 1) / (3 (m - 1)).
PointCloud grid_cloud(int x_values, int y_values, int z_values) {
  PointCloud cloud;
  for (int x = 0; x < x_values; ++x) {
    for (int y = 0; y < y_values; ++y) {
      for (int z = 0; z < z_values; ++z) {
        cloud.xyz.insert(cloud.xyz.end(), {static_cast<double>(x), 10.0 * y, -3.0 + 0.5 * z});
      }
    }
  }
  return cloud;
}

TEST(VarianceTest, GridVariancesMatchHandValues) {
  const CloudCheck check = check_class_cloud(grid_cloud(4, 2, 3), 1.0, 0.15);
  EXPECT_EQ(check.verdict, CloudVerdict::kAccepted);
  EXPECT_NEAR(check.variance[0], 5.0 / 9.0, 1e-12);  // m = 4
  EXPECT_NEAR(check.variance[1], 1.0, 1e-12);        // m = 2
  EXPECT_NEAR(check.variance[2], 2.0 / 3.0, 1e-12);  // m = 3
}

TEST(VarianceTest, NormalizeScalesVariance) {
  // Half-range 0.5 quarters every variance: 5/36 = 0.139 for m = 4, below 0.15.
  const CloudCheck check = check_class_cloud(grid_cloud(4, 4, 4), 0.5, 0.15);
  EXPECT_EQ(check.verdict, CloudVerdict::kLowVariance);
  EXPECT_NEAR(check.variance[0], 5.0 / 36.0, 1e-12);

  EXPECT_EQ(check_class_cloud(grid_cloud(4, 4, 4), 0.5, 0.13).verdict, CloudVerdict::kAccepted);
}

TEST(VarianceTest, ConcentratedAxisRejected) {
  // 32 points; z is 1 for one point and 0 for the rest. Normalised to range 2,
  // z is a two-valued variable with variance 4 q (1 - q), q = 1/32: 0.12109375.
  PointCloud cloud;
  for (int i = 0; i < 32; ++i) {
    cloud.xyz.insert(cloud.xyz.end(), {static_cast<double>(i % 4), static_cast<double>(i / 8), i == 0 ? 1.0 : 0.0});
  }
  const CloudCheck check = check_class_cloud(cloud, 1.0, 0.15);
  EXPECT_EQ(check.verdict, CloudVerdict::kLowVariance);
  EXPECT_NEAR(check.variance[0], 5.0 / 9.0, 1e-12);
  EXPECT_NEAR(check.variance[1], 5.0 / 9.0, 1e-12);
  EXPECT_NEAR(check.variance[2], 0.12109375, 1e-12);

  EXPECT_EQ(check_class_cloud(cloud, 1.0, 0.12).verdict, CloudVerdict::kAccepted);
}

TEST(VarianceTest, ThresholdIsStrict) {
  // Two points per axis normalise to -1 and +1: variance exactly 1.
  PointCloud cloud;
  cloud.xyz = {0.0, 5.0, -2.0, 3.0, 6.0, 2.0};
  EXPECT_EQ(check_class_cloud(cloud, 1.0, 1.0).verdict, CloudVerdict::kLowVariance);
  EXPECT_EQ(check_class_cloud(cloud, 1.0, 0.999).verdict, CloudVerdict::kAccepted);
}

TEST(VarianceTest, DegenerateClouds) {
  PointCloud flat = grid_cloud(3, 3, 1);  // z constant
  EXPECT_EQ(check_class_cloud(flat, 1.0, 0.15).verdict, CloudVerdict::kFlatAxis);

  PointCloud runaway = grid_cloud(3, 3, 3);
  runaway.runaway = true;
  EXPECT_EQ(check_class_cloud(runaway, 1.0, 0.15).verdict, CloudVerdict::kRunaway);

  PointCloud with_nan = grid_cloud(3, 3, 3);
  with_nan.xyz[7] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(check_class_cloud(with_nan, 1.0, 0.15).verdict, CloudVerdict::kRunaway);

  // Both ends finite but the range overflows to infinity.
  PointCloud huge = grid_cloud(2, 2, 2);
  for (std::size_t i = 0; i < huge.xyz.size(); i += 3) huge.xyz[i] = huge.xyz[i] == 0.0 ? -1.7e308 : 1.7e308;
  EXPECT_EQ(check_class_cloud(huge, 1.0, 0.15).verdict, CloudVerdict::kFlatAxis);

  EXPECT_EQ(check_class_cloud(PointCloud{}, 1.0, 0.15).verdict, CloudVerdict::kFlatAxis);
}

// ---------------------------------------------------------------------------
// Instance weight table

// The column a row scales: 0 for rows 0-12, then 1..11 in blocks of 12.
int scaled_column(int row) { return row < 13 ? 0 : 1 + (row - 13) / 12; }

TEST(WeightTable, RowsFollowTheRule) {
  const auto& table = instance_weight_table();
  ASSERT_EQ(table.size(), 145u);

  for (double w : table[6]) EXPECT_EQ(w, 1.0);
  EXPECT_EQ(table[0][0], 0.4);
  EXPECT_EQ(table[1][0], 0.5);
  EXPECT_EQ(table[12][0], 1.6);
  EXPECT_EQ(table[13][1], 0.4);   // first row of parameter b
  EXPECT_EQ(table[18][1], 0.9);
  EXPECT_EQ(table[19][1], 1.1);   // 1.0 is skipped after row 12
  EXPECT_EQ(table[24][1], 1.6);
  EXPECT_EQ(table[99][8], 0.6);   // parameter i
  EXPECT_EQ(table[108][8], 1.6);  // the reference's file has 0.6 here
  EXPECT_EQ(table[133][11], 0.4); // first row of parameter l
  EXPECT_EQ(table[144][11], 1.6);

  for (int row = 0; row < 145; ++row) {
    SCOPED_TRACE("row " + std::to_string(row));
    int ones = 0;
    for (int col = 0; col < 12; ++col) {
      if (table[row][col] == 1.0) {
        ++ones;
      } else {
        EXPECT_EQ(col, scaled_column(row));
      }
    }
    EXPECT_EQ(ones, row == 6 ? 12 : 11);
  }

  // Every row is distinct.
  for (int a = 0; a < 145; ++a) {
    for (int b = a + 1; b < 145; ++b) EXPECT_NE(table[a], table[b]) << "rows " << a << " and " << b;
  }
}

TEST(WeightTable, AttenuateAndApply) {
  const InstanceWeights& w = instance_weight_table()[12];  // a x 1.6
  EXPECT_EQ(attenuate_weights(w, 1.0), w);
  EXPECT_DOUBLE_EQ(attenuate_weights(w, 0.5)[0], 1.3);
  EXPECT_DOUBLE_EQ(attenuate_weights(w, 0.25)[0], 1.15);
  EXPECT_DOUBLE_EQ(attenuate_weights(w, 0.1)[0], 1.06);
  EXPECT_EQ(attenuate_weights(w, 0.5)[3], 1.0);
  for (double value : attenuate_weights(w, 0.0)) EXPECT_EQ(value, 1.0);

  Ifs ifs;
  ifs.maps[0] = make_map({1, 2, 3, 4, 5, 6, 7, 8, 9}, {10, 11, 12}, 0.25);
  ifs.maps[1] = make_map({-1, -2, -3, -4, -5, -6, -7, -8, -9}, {-10, -11, -12}, 0.75);
  InstanceWeights weights;
  for (int i = 0; i < 12; ++i) weights[i] = 0.5 * (i + 1);
  const Ifs scaled = apply_weights(ifs, weights);
  for (int t = 0; t < 2; ++t) {
    const double sign = t == 0 ? 1.0 : -1.0;
    for (int i = 0; i < 9; ++i) EXPECT_EQ(scaled.maps[t].matrix[i], sign * (i + 1) * 0.5 * (i + 1));
    for (int i = 0; i < 3; ++i) EXPECT_EQ(scaled.maps[t].translation[i], sign * (i + 10) * 0.5 * (i + 10));
  }
  EXPECT_EQ(scaled.maps[0].probability, 0.25);
  EXPECT_EQ(scaled.maps[1].probability, 0.75);
}

// ---------------------------------------------------------------------------
// Class CSV format

TEST(ClassCsv, FormatMatchesNumpySavetxt) {
  Ifs ifs;
  ifs.maps[0] = make_map({0.5, -1, 0.1, 0, 1e-20, -0.25, 2, 3, 4}, {0.125, -0.75, 1}, 0.6);
  ifs.maps[1] = make_map(kIdentity, {0, 0, 0}, 0.4);

  const std::string text = format_class_csv(ifs);
  const std::string expected_first_line =
      "5.000000000000000000e-01,-1.000000000000000000e+00,1.000000000000000056e-01,"
      "0.000000000000000000e+00,9.999999999999999452e-21,-2.500000000000000000e-01,"
      "2.000000000000000000e+00,3.000000000000000000e+00,4.000000000000000000e+00,"
      "1.250000000000000000e-01,-7.500000000000000000e-01,1.000000000000000000e+00,"
      "5.999999999999999778e-01\n";
  ASSERT_GE(text.size(), expected_first_line.size());
  EXPECT_EQ(text.substr(0, expected_first_line.size()), expected_first_line);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);
  EXPECT_EQ(std::count(text.begin(), text.end(), ','), 24);

  EXPECT_EQ(parse_class_csv(text, "test"), ifs);
}

TEST(ClassCsv, RoundTripIsBitwise) {
  TempDir temp;
  const fs::path& dir = temp.path();
  for (std::uint64_t attempt = 0; attempt < 50; ++attempt) {
    CounterRng rng(99, RngPurpose::kClassParams, attempt);
    const Ifs ifs = random_ifs(rng);
    const fs::path path = dir / class_csv_name(static_cast<int>(attempt));
    write_class_csv(path, ifs);
    EXPECT_EQ(read_class_csv(path), ifs) << path;
  }
  EXPECT_EQ(class_csv_name(7), "000007.csv");
}

TEST(ClassCsv, AcceptsWindowsLineEndsAndSpaces) {
  std::string row = " 1.0, 2,3,4,5,6,7,8,9,10,11,12 , 0.5";
  const Ifs ifs = parse_class_csv(row + "\r\n" + row + "\r\n\n", "test");
  EXPECT_EQ(ifs.maps[1].matrix[0], 1.0);
  EXPECT_EQ(ifs.maps[1].translation[2], 12.0);
  EXPECT_EQ(ifs.maps[1].probability, 0.5);
}

TEST(ClassCsv, RejectsMalformedText) {
  const std::string good = "1,2,3,4,5,6,7,8,9,10,11,12,0.5\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {good, "expected 2 lines"},
      {good + good + good, "expected 2 lines"},
      {good + "1,2,3,4,5,6,7,8,9,10,11,12\n", "line 2 has 12 values"},
      {good + "1,2,3,4,5,6,7,8,9,10,11,12,0.5,1\n", "more than 13"},
      {good + "1,2,3,4,x,6,7,8,9,10,11,12,0.5\n", "value 5 'x' is not a number"},
      {good + "1,2,3,4,,6,7,8,9,10,11,12,0.5\n", "value 5 '' is not a number"},
      {good + "1,2,3,4,nan,6,7,8,9,10,11,12,0.5\n", "expected a finite number"},
      {"1,2,3,4,5,6,7,8,9,10,11,12,1.5\n" + good, "probability 1.5"},
  };
  for (const auto& [text, message] : cases) {
    try {
      parse_class_csv(text, "/some/000003.csv");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const std::runtime_error& error) {
      const std::string what = error.what();
      EXPECT_NE(what.find("/some/000003.csv"), std::string::npos) << what;
      EXPECT_NE(what.find(message), std::string::npos) << what;
      EXPECT_NE(what.find("datagen_from_scratch: 1"), std::string::npos) << what;
    }
  }
}

// ---------------------------------------------------------------------------
// Instances

// A class whose x coordinate follows x' = a x + 0.1 under both maps, while y
// and z stay 0: x_n = 0.1 (1 - a^n) / (1 - a).
Ifs x_only_class(double a) {
  Ifs ifs;
  ifs.maps[0] = make_map(diagonal(a, 0.5, 0.5), {0.1, 0, 0}, 0.5);
  ifs.maps[1] = ifs.maps[0];
  return ifs;
}

void expect_x_orbit(const Instance& instance, double a, std::int64_t point_num) {
  ASSERT_EQ(instance.xyz.size(), static_cast<std::size_t>(3 * point_num));
  for (std::int64_t n = 0; n < point_num; ++n) {
    const double x = 0.1 * (1.0 - std::pow(a, static_cast<double>(n))) / (1.0 - a);
    ASSERT_NEAR(instance.xyz[3 * n], x, 1e-6) << "point " << n;
    ASSERT_EQ(instance.xyz[3 * n + 1], 0.0f) << "point " << n;
    ASSERT_EQ(instance.xyz[3 * n + 2], 0.0f) << "point " << n;
  }
}

TEST(MakeInstance, FullWeightsWhenContractive) {
  // Instance 0 scales a by 0.4: 0.7 -> 0.28.
  const Instance instance = make_instance(x_only_class(0.7), 2, 0, 5, 300);
  EXPECT_EQ(instance.attenuation, 1.0);
  expect_x_orbit(instance, 0.7 * 0.4, 300);
}

TEST(MakeInstance, AttenuatedRetryAfterRunaway) {
  // Instance 12 scales a by 1.6: 0.7 -> 1.12 grows past 1e10 within 512
  // points; at half strength (x 1.3) a = 0.91 is contractive.
  const Instance instance = make_instance(x_only_class(0.7), 2, 12, 5, 512);
  EXPECT_EQ(instance.attenuation, 0.5);
  expect_x_orbit(instance, 0.7 * 1.3, 512);

  // The retry uses the instance's own stream, as a direct run would.
  const Ifs attenuated = apply_weights(x_only_class(0.7), attenuate_weights(instance_weight_table()[12], 0.5));
  CounterRng rng(5, RngPurpose::kInstancePoints, (std::uint64_t{2} << 20) | 12);
  const PointCloud cloud = generate_points(attenuated, 512, rng);
  ASSERT_FALSE(cloud.runaway);
  const std::vector<float> expected(cloud.xyz.begin(), cloud.xyz.end());
  EXPECT_EQ(instance.xyz, expected);
}

TEST(MakeInstance, FallsBackToClassItself) {
  // a = 0.95 with weights 1.6, 1.3, 1.15, 1.06 gives 1.52 .. 1.007, all
  // running away over 8192 points (1.007^8191 is about 1e25); weights 1 give 0.95.
  const Instance instance = make_instance(x_only_class(0.95), 0, 12, 5, 8192);
  EXPECT_EQ(instance.attenuation, 0.0);
  expect_x_orbit(instance, 0.95, 8192);
}

TEST(MakeInstance, ThrowsWhenClassRunsAway) {
  try {
    make_instance(x_only_class(1.5), 3, 6, 5, 512);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("instance 6 of class 3"), std::string::npos) << error.what();
  }
  EXPECT_THROW(make_instance(x_only_class(0.5), 0, 145, 5, 16), std::out_of_range);
}

// ---------------------------------------------------------------------------
// Library on disk

Config small_config(const fs::path& base, int n_categories) {
  Config config;
  config.fract_base_dir = base.string();
  config.problem_scale = 4;  // point_num 16
  config.n_categories = n_categories;
  config.seed = 7;
  return config;
}

// Every regular file under `dir`, by relative path, with its contents.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files[fs::relative(entry.path(), dir).string()] = read_file(entry.path());
  }
  return files;
}

// Compares two snapshots file by file, naming each difference instead of
// printing whole files.
void expect_same_files(const std::map<std::string, std::string>& actual,
                       const std::map<std::string, std::string>& expected) {
  EXPECT_EQ(actual.size(), expected.size());
  int reported = 0;
  for (const auto& [name, content] : expected) {
    const auto found = actual.find(name);
    if (found == actual.end()) {
      ADD_FAILURE() << "missing file " << name;
    } else if (found->second != content) {
      ADD_FAILURE() << "different content in " << name;
    } else {
      continue;
    }
    if (++reported == 10) return;
  }
  for (const auto& [name, content] : actual) {
    if (!expected.contains(name)) ADD_FAILURE() << "unexpected file " << name;
  }
}

// Sets the modification time of every regular file under `dir` to a fixed
// instant 20 years ago, so that any later write shows up whatever the file
// system's timestamp granularity.
const fs::file_time_type kAgedTime = fs::file_time_type::clock::now() - std::chrono::hours(24 * 365 * 20);

void age_files(const fs::path& dir) {
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) fs::last_write_time(entry.path(), kAgedTime);
  }
}

// Relative paths of the regular files under `dir` written since age_files.
std::vector<std::string> rewritten_files(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file() && fs::last_write_time(entry.path()) != kAgedTime) {
      names.push_back(fs::relative(entry.path(), dir).string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Restores the OpenMP thread count when a test ends.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(omp_get_max_threads()) {}
  ~ThreadCountGuard() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

TEST(ClassSearch, ResumesFromSavedPosition) {
  TempDir dir;
  const fs::path params_dir = dir.path() / "3DIFS_param";
  const std::vector<Ifs> direct = search_classes(dir.path() / "direct", small_config(dir.path(), 4), 5);

  ClassSearchStats first{};
  search_classes(params_dir, small_config(dir.path(), 2), 5, &first);
  EXPECT_EQ(first.first_attempt, 0u);
  EXPECT_EQ(first.written, 2);

  ClassSearchStats second{};
  const std::vector<Ifs> resumed = search_classes(params_dir, small_config(dir.path(), 4), 5, &second);
  EXPECT_EQ(resumed, direct);
  EXPECT_EQ(second.reused, 2);
  EXPECT_EQ(second.written, 2);
  EXPECT_GT(second.first_attempt, 0u);
  EXPECT_EQ(second.first_attempt, first.first_attempt + first.attempts);
}

TEST(ClassSearch, FillsHoleWithSameClass) {
  TempDir dir;
  const fs::path params_dir = dir.path() / "3DIFS_param";
  const Config config = small_config(dir.path(), 3);
  search_classes(params_dir, config, 5);
  const std::string original = read_file(params_dir / class_csv_name(1));

  // The saved position no longer matches the files, so the search walks the
  // stream from attempt 0 and finds the same class 1 again.
  fs::remove(params_dir / class_csv_name(1));
  ClassSearchStats stats{};
  search_classes(params_dir, config, 5, &stats);
  EXPECT_EQ(stats.first_attempt, 0u);
  EXPECT_EQ(stats.reused, 2);
  EXPECT_EQ(stats.written, 1);
  EXPECT_EQ(read_file(params_dir / class_csv_name(1)), original);
}

TEST(ClassSearch, KeepsForeignClassFile) {
  TempDir dir;
  const Config config = small_config(dir.path(), 3);
  const std::vector<Ifs> direct = search_classes(dir.path() / "direct", config, 5);

  // Class 1 comes from elsewhere (another seed, say) and there is no saved
  // position: it stays, and class 2 is still the third accepted candidate.
  const fs::path params_dir = dir.path() / "3DIFS_param";
  fs::create_directories(params_dir);
  Ifs foreign;
  foreign.maps[0] = make_map(diagonal(0.5, 0.5, 0.5), {1, 0, 0}, 0.5);
  foreign.maps[1] = make_map(diagonal(0.5, 0.5, 0.5), {0, 1, 0}, 0.5);
  write_class_csv(params_dir / class_csv_name(1), foreign);

  const std::vector<Ifs> classes = search_classes(params_dir, config, 5);
  ASSERT_EQ(classes.size(), 3u);
  EXPECT_EQ(classes[0], direct[0]);
  EXPECT_EQ(classes[1], foreign);
  EXPECT_EQ(classes[2], direct[2]);
  EXPECT_EQ(read_class_csv(params_dir / class_csv_name(1)), foreign);
}

TEST(LibraryPaths, ReferenceLayout) {
  Config config;
  config.fract_base_dir = "fr";
  config.seed = 42;
  const FractalLibraryPaths paths = fractal_library_paths(config);
  EXPECT_EQ(paths.root, fs::path("fr/var0.15/seed42"));
  EXPECT_EQ(paths.params_dir, fs::path("fr/var0.15/seed42/3DIFS_param"));
  EXPECT_EQ(paths.instances_dir, fs::path("fr/var0.15/seed42/instances/np8192"));
  EXPECT_EQ(class_csv_path(paths, 12), fs::path("fr/var0.15/seed42/3DIFS_param/000012.csv"));
  EXPECT_EQ(instance_path(paths, 3, 71), fs::path("fr/var0.15/seed42/instances/np8192/000003/000003_0071.npy"));

  config.variance_threshold = 0.2;
  config.problem_scale = 5;
  config.seed = 0;
  EXPECT_EQ(fractal_library_paths(config).instances_dir, fs::path("fr/var0.2/seed0/instances/np128"));
}

TEST(Library, ClassesAreAcceptedCandidatesInOrder) {
  TempDir dir;
  const Config config = small_config(dir.path(), 3);
  generate_fractal_library(config, 4);

  // Walk the attempt stream independently.
  std::vector<Ifs> expected;
  for (std::uint64_t attempt = 0; expected.size() < 3; ++attempt) {
    const ClassCandidate candidate = evaluate_class_candidate(config, attempt);
    if (candidate.check.verdict != CloudVerdict::kAccepted) continue;
    if (std::find(expected.begin(), expected.end(), candidate.ifs) != expected.end()) continue;
    expected.push_back(candidate.ifs);
  }

  const FractalLibraryPaths paths = fractal_library_paths(config);
  for (int k = 0; k < 3; ++k) {
    const Ifs ifs = read_class_csv(class_csv_path(paths, k));
    EXPECT_EQ(ifs, expected[k]) << "class " << k;

    // The stored cloud of each instance is the float32 image of make_instance.
    for (int instance : {0, 6, 144}) {
      const std::vector<float> stored = read_instance(instance_path(paths, k, instance), 16);
      EXPECT_EQ(stored, make_instance(ifs, k, instance, 7, 16).xyz) << "class " << k << " instance " << instance;
    }
  }
  EXPECT_FALSE(fs::exists(class_csv_path(paths, 3)));
  EXPECT_EQ(snapshot(paths.instances_dir).size(), 3u * 145u);
}

// Regression: classes searched at scale 4 (16-point clouds) once ran away in
// the 128-point instances of scale 5, because the class directory is shared by
// every scale. Accepted classes must stay bounded over 65,536 points.
TEST(ClassSearch, SmallScaleClassesStayBoundedAtLargerScales) {
  TempDir dir;
  const Config config = small_config(dir.path(), 12);
  const std::vector<Ifs> classes = search_classes(dir.path() / "3DIFS_param", config, 5);
  ASSERT_EQ(classes.size(), 12u);
  for (std::size_t k = 0; k < classes.size(); ++k) {
    CounterRng rng(7, RngPurpose::kInstancePoints, k);
    EXPECT_FALSE(generate_points(classes[k], kStabilityCheckPoints, rng).runaway) << "class " << k;
  }
}

TEST(Library, SameBytesForOneAndTwoThreads) {
  ThreadCountGuard guard;
  TempDir one, two;

  omp_set_num_threads(1);
  generate_fractal_library(small_config(one.path(), 3), 3);
  omp_set_num_threads(2);
  generate_fractal_library(small_config(two.path(), 3), 10000);

  const auto files_one = snapshot(one.path());
  EXPECT_EQ(files_one.size(), 3u + 1u + 1u + 3u * 145u);  // CSVs, search state, lock file, instances
  expect_same_files(snapshot(two.path()), files_one);
}

TEST(Library, ResumedSearchMatchesDirectRun) {
  TempDir direct, resumed, rederived;

  generate_fractal_library(small_config(direct.path(), 4), 5);

  generate_fractal_library(small_config(resumed.path(), 2), 5);
  generate_fractal_library(small_config(resumed.path(), 4), 5);

  // Without the saved position the search walks the stream again from 0.
  generate_fractal_library(small_config(rederived.path(), 2), 5);
  fs::remove(fractal_library_paths(small_config(rederived.path(), 2)).params_dir / ".search_state");
  generate_fractal_library(small_config(rederived.path(), 4), 5);

  const auto expected = snapshot(direct.path());
  EXPECT_EQ(expected.size(), 4u + 1u + 1u + 4u * 145u);  // CSVs, search state, lock file, instances
  expect_same_files(snapshot(resumed.path()), expected);
  expect_same_files(snapshot(rederived.path()), expected);
}

TEST(Library, SecondRunRewritesNothing) {
  TempDir dir;
  const Config config = small_config(dir.path(), 2);
  generate_fractal_library(config);
  age_files(dir.path());

  generate_fractal_library(config);
  EXPECT_EQ(rewritten_files(dir.path()), std::vector<std::string>{});
}

TEST(Library, InvalidInstanceFilesAreRegenerated) {
  TempDir dir;
  const Config config = small_config(dir.path(), 2);
  const FractalLibraryPaths paths = fractal_library_paths(config);
  generate_fractal_library(config);
  const auto original = snapshot(dir.path());

  // Truncated, wrong shape, wrong dtype, non-finite.
  const fs::path truncated = instance_path(paths, 0, 3);
  const std::string bytes = read_file(truncated);
  write_file_atomic(truncated, std::string_view(bytes).substr(0, bytes.size() - 5));

  const fs::path wrong_shape = instance_path(paths, 1, 0);
  std::vector<float> two_columns(32, 0.5f);
  write_npy(wrong_shape, DType::kFloat32, {16, 2}, two_columns.data());

  const fs::path wrong_dtype = instance_path(paths, 1, 50);
  std::vector<double> doubles(48, 0.5);
  write_npy(wrong_dtype, DType::kFloat64, {16, 3}, doubles.data());

  const fs::path non_finite = instance_path(paths, 1, 144);
  std::vector<float> values = read_instance(non_finite, 16);
  values[10] = std::numeric_limits<float>::infinity();
  write_npy(non_finite, DType::kFloat32, {16, 3}, values.data());

  age_files(dir.path());
  generate_fractal_library(config);
  expect_same_files(snapshot(dir.path()), original);

  // Only the four damaged files were written again.
  const std::vector<std::string> expected = {
      fs::relative(truncated, dir.path()).string(), fs::relative(wrong_shape, dir.path()).string(),
      fs::relative(wrong_dtype, dir.path()).string(), fs::relative(non_finite, dir.path()).string()};
  EXPECT_EQ(rewritten_files(dir.path()), expected);
}

TEST(Library, FromScratchRebuildsEverything) {
  TempDir dir;
  Config config = small_config(dir.path(), 2);
  const FractalLibraryPaths paths = fractal_library_paths(config);
  generate_fractal_library(config);
  const auto original = snapshot(dir.path());

  // A stray instance and a class CSV with other parameters, which must both go.
  const fs::path stray = paths.instances_dir / "000000" / "stray.npy";
  write_file_atomic(stray, std::string_view("not a point cloud"));
  Ifs other;
  other.maps[0] = make_map(diagonal(0.5, 0.5, 0.5), {1, 0, 0}, 0.5);
  other.maps[1] = make_map(diagonal(0.5, 0.5, 0.5), {0, 1, 0}, 0.5);
  write_class_csv(class_csv_path(paths, 1), other);
  age_files(dir.path());

  config.datagen_from_scratch = true;
  generate_fractal_library(config);
  EXPECT_FALSE(fs::exists(stray));
  expect_same_files(snapshot(dir.path()), original);
  // Every file except the lock file, which is only opened.
  EXPECT_EQ(rewritten_files(dir.path()).size(), original.size() - 1);
}

TEST(Library, MalformedClassCsvNamesTheFile) {
  TempDir dir;
  Config config = small_config(dir.path(), 2);
  const FractalLibraryPaths paths = fractal_library_paths(config);
  generate_fractal_library(config);
  write_file_atomic(class_csv_path(paths, 1), std::string_view("1,2,3\n"));

  try {
    generate_fractal_library(config);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& error) {
    const std::string what = error.what();
    EXPECT_NE(what.find(class_csv_path(paths, 1).string()), std::string::npos) << what;
    EXPECT_NE(what.find("datagen_from_scratch: 1"), std::string::npos) << what;
  }

  config.datagen_from_scratch = true;
  EXPECT_NO_THROW(generate_fractal_library(config));
  EXPECT_NO_THROW(read_class_csv(class_csv_path(paths, 1)));
}

using scaffold_test::LogCapture;
using scaffold_test::replace_once;

TEST(Library, HostileInstanceFilesRegeneratedWithWarning) {
  TempDir dir;
  const Config config = small_config(dir.path(), 2);
  const FractalLibraryPaths paths = fractal_library_paths(config);
  generate_fractal_library(config);
  const auto original = snapshot(dir.path());
  const std::string good = read_file(instance_path(paths, 0, 0));

  // Each damaged copy of a valid 16-point instance, with the defect the warning must report.
  std::vector<float> with_nan = read_instance(instance_path(paths, 1, 7), 16);
  with_nan[4] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan_file(reinterpret_cast<const char*>(encode_npy(DType::kFloat32, {16, 3}, with_nan.data()).data()),
                             good.size());
  struct Case {
    fs::path path;
    std::string bytes;
    std::string defect;
  };
  const std::vector<Case> cases = {
      {instance_path(paths, 0, 1), "", "file is 0 bytes, shorter than the 8-byte magic"},
      {instance_path(paths, 0, 2), replace_once(good, "NUMPY", "NUMPX"), "missing the \\x93NUMPY magic"},
      {instance_path(paths, 0, 3), replace_once(good, "False", "True "), "array is in Fortran order"},
      {instance_path(paths, 0, 4), replace_once(good, "(16, 3)", "(32, 3)"), "file truncated"},
      {instance_path(paths, 0, 5), replace_once(good, "<f4", "<f8"), "file truncated"},
      {instance_path(paths, 0, 6), replace_once(good, "<f4", "<i4"), "unsupported dtype descriptor '<i4'"},
      {instance_path(paths, 1, 0), good + "trailing", "file has trailing data"},
      {instance_path(paths, 1, 7), nan_file, "point 1 has a non-finite coordinate"},
  };
  for (const Case& test_case : cases) write_file_atomic(test_case.path, test_case.bytes);

  age_files(dir.path());
  const LogCapture log;
  generate_fractal_library(config);
  expect_same_files(snapshot(dir.path()), original);
  EXPECT_EQ(rewritten_files(dir.path()).size(), cases.size());
  for (const Case& test_case : cases) {
    const std::string line_start = "regenerating invalid instance file: ";
    const std::size_t line = log.text().find(line_start + "invalid .npy file " + test_case.path.string() + ": " +
                                             test_case.defect);
    const std::size_t nan_line =
        log.text().find(line_start + "invalid instance file " + test_case.path.string() + ": " + test_case.defect);
    EXPECT_TRUE(line != std::string::npos || nan_line != std::string::npos)
        << "no warning naming " << test_case.path << " with '" << test_case.defect << "' in:\n" << log.text();
  }
}

TEST(Library, ClassCsvWrongColumnCountNamesFile) {
  TempDir dir;
  const Config config = small_config(dir.path(), 2);
  const FractalLibraryPaths paths = fractal_library_paths(config);
  generate_fractal_library(config);
  const std::string good = read_file(class_csv_path(paths, 1));

  // Line 2 loses its last value, or gains a fourteenth.
  const std::string short_line = good.substr(0, good.rfind(',')) + "\n";
  const std::string long_line = good.substr(0, good.size() - 1) + ",0.5\n";
  for (const auto& [text, defect] : {std::pair{short_line, "line 2 has 12 values, expected 13"},
                                     std::pair{long_line, "line 2 has more than 13 comma-separated values"}}) {
    write_file_atomic(class_csv_path(paths, 1), text);
    try {
      generate_fractal_library(config);
      ADD_FAILURE() << "accepted a class CSV with a wrong column count: " << text;
    } catch (const std::runtime_error& error) {
      const std::string what = error.what();
      EXPECT_NE(what.find("invalid class CSV " + class_csv_path(paths, 1).string() + ": " + defect), std::string::npos)
          << what;
      EXPECT_NE(what.find("Delete the file"), std::string::npos) << what;
    }
  }
}

TEST(Library, OrphanedTemporaryFilesRemoved) {
  TempDir dir;
  const Config config = small_config(dir.path(), 2);
  const FractalLibraryPaths paths = fractal_library_paths(config);
  generate_fractal_library(config);
  const auto original = snapshot(dir.path());

  // Temporary files of a writer that no longer exists: a reaped child.
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const std::string suffix = ".tmp" + std::to_string(dead);
  const std::vector<fs::path> orphans = {paths.params_dir / (".000001.csv" + suffix),
                                         paths.params_dir / (".search_state" + suffix),
                                         paths.instances_dir / "000001" / (".000001_0003.npy" + suffix)};
  for (const fs::path& orphan : orphans) write_file_atomic(orphan, std::string_view("partial"));
  // Process 1 always exists, so its file stays.
  const fs::path live = paths.instances_dir / "000000" / ".000000_0001.npy.tmp1";
  write_file_atomic(live, std::string_view("in progress"));

  generate_fractal_library(config);
  for (const fs::path& orphan : orphans) EXPECT_FALSE(fs::exists(orphan)) << orphan;
  EXPECT_TRUE(fs::exists(live));
  fs::remove(live);
  expect_same_files(snapshot(dir.path()), original);
}

TEST(Library, RejectsImpossibleSettings) {
  TempDir dir;
  Config config = small_config(dir.path(), 2);
  EXPECT_THROW(generate_fractal_library(config, 0), std::invalid_argument);

  config.variance_threshold = 1.0;  // a normalised axis variance is at most 1
  EXPECT_THROW(generate_fractal_library(config), std::invalid_argument);
}

TEST(ReadInstance, RejectsDefectsNamingTheFile) {
  TempDir dir;
  const fs::path path = dir.path() / "000000_0000.npy";
  std::vector<float> values(12, 1.5f);
  write_npy(path, DType::kFloat32, {4, 3}, values.data());
  EXPECT_EQ(read_instance(path, 4), values);
  EXPECT_THROW(read_instance(path, 5), NpyError);

  values[7] = std::numeric_limits<float>::quiet_NaN();
  write_npy(path, DType::kFloat32, {4, 3}, values.data());
  try {
    read_instance(path, 4);
    FAIL() << "expected an error";
  } catch (const NpyError& error) {
    const std::string what = error.what();
    EXPECT_NE(what.find(path.string()), std::string::npos) << what;
    EXPECT_NE(what.find("point 2"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace scaffold
