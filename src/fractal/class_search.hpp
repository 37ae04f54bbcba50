// Search for fractal classes: random two-map IFS candidates whose point clouds
// pass the variance test, saved as the reference's parameter CSVs.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/rank_share.hpp"
#include "fractal/ifs.hpp"

namespace scaffold {

// Outcome of the acceptance test for a candidate's cloud.
enum class CloudVerdict {
  kAccepted,
  kRunaway,      // some coordinate exceeded 1e10 or was not finite
  kFlatAxis,     // some axis range (max - min) was 0 or not finite
  kLowVariance,  // some normalised axis variance was <= the threshold
};

const char* verdict_name(CloudVerdict verdict);

struct CloudCheck {
  CloudVerdict verdict = CloudVerdict::kRunaway;
  // Per-axis population variance (divided by N, as numpy.var) after each axis
  // is mapped to p <- (p - mean) * (2 * normalize / range). Zero unless the
  // cloud got as far as the variance test.
  std::array<double, 3> variance{};
};

// Applies the acceptance test: no runaway, all coordinates finite, every axis
// range finite and > 0, and every normalised axis variance > `variance_threshold`.
CloudCheck check_class_cloud(const PointCloud& cloud, double normalize, double variance_threshold);

// One evaluated candidate of the class search.
struct ClassCandidate {
  std::uint64_t attempt = 0;
  Ifs ifs;
  CloudCheck check;
};

// Orbit length over which an accepted candidate must also stay bounded. The
// class directory is shared by every problem scale, and the instances of scale
// 8 draw 65,536 points: a class accepted on the 16 points of scale 4 could
// otherwise run away there.
inline constexpr std::int64_t kStabilityCheckPoints = 65536;

// Evaluates attempt `attempt`: parameters from CounterRng(seed, kClassParams,
// attempt), a cloud of config.point_num() points from CounterRng(seed,
// kClassPoints, attempt), then check_class_cloud. An accepted candidate whose
// orbit from the same stream runs away within max(point_num,
// kStabilityCheckPoints) points is rejected as runaway.
ClassCandidate evaluate_class_candidate(const Config& config, std::uint64_t attempt);

// File name of class `category` in the parameter directory: "NNNNNN.csv".
std::string class_csv_name(int category);

// The CSV text of one class: 2 lines of 13 comma-separated values, each
// printed with "%.18e" (numpy.savetxt's default format), which round-trips
// every double exactly.
std::string format_class_csv(const Ifs& ifs);

// Parses the text of a class CSV; `origin` names the source in errors.
// Throws std::runtime_error on any defect.
Ifs parse_class_csv(std::string_view text, const std::string& origin);

// Writes a class CSV atomically, with the fault point "class_write" (core/fault_injection.hpp).
void write_class_csv(const std::filesystem::path& path, const Ifs& ifs);

struct ClassSearchStats {
  int reused = 0;                  // classes whose CSV already existed and was kept
  int written = 0;                 // classes written by this search
  std::uint64_t first_attempt = 0; // attempt index the search resumed at
  std::uint64_t attempts = 0;      // candidates evaluated by this search
  std::uint64_t runaway = 0;
  std::uint64_t flat_axis = 0;
  std::uint64_t low_variance = 0;
  std::uint64_t duplicates = 0;    // passed the test but equal to an earlier class
};

// Makes sure classes 0 .. config.n_categories - 1 exist in `params_dir` and
// returns them in index order.
//
// Class k is the k-th accepted candidate in attempt order (attempt 0, 1, 2,
// ...), skipping candidates bitwise-equal to an earlier class, so the library
// does not depend on the thread count, on `batch_size` or on interruptions.
// Candidates are evaluated in parallel in rounds of at most `batch_size`, then
// accepted in attempt order.
//
// Resuming: existing valid CSVs are kept. The file `.search_state` in
// `params_dir` records the next attempt index after the last accepted class,
// together with the settings that shape the search (seed, point_num, normalize,
// variance_threshold). When it matches the config and classes 0 .. accepted-1
// exist, the search continues from there; otherwise it walks the attempt
// stream again from attempt 0. A CSV that already exists at the index a
// candidate would take is kept in place of the candidate.
// Throws when a CSV below n_categories is malformed, naming the file.
// With several ranks in `share`, each rank evaluates every size-th candidate
// of a round and the verdicts are summed over ranks. Every rank accepts the
// same classes, and only rank 0 writes files.
std::vector<Ifs> search_classes(const std::filesystem::path& params_dir, const Config& config, int batch_size,
                                ClassSearchStats* stats = nullptr, const RankShare& share = {});

}  // namespace scaffold
