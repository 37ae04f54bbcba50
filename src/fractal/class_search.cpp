#include "fractal/class_search.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "core/atomic_file.hpp"
#include "core/progress.hpp"
#include "core/trace.hpp"
#include "fractal/library.hpp"

namespace scaffold {
namespace {

constexpr const char* kStateFileName = ".search_state";
constexpr const char* kStateHeader = "# scaffold class search position; delete this file to restart the search at attempt 0";

// A search that accepts nothing in this many consecutive attempts stops with
// an error instead of running forever.
// NOTE: a plausible but very strict threshold could need more; the limit is a guess.
constexpr std::uint64_t kMaxAttemptsWithoutAcceptance = 1'000'000;

std::string defect_hint() {
  return " Delete the file to search for this class again, or set datagen_from_scratch: 1 to rebuild the "
         "fractal library.";
}

std::string format_double(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

// Position of a search: `accepted` classes found, `next_attempt` the attempt to evaluate next.
struct SearchState {
  std::uint64_t seed = 0;
  std::int64_t point_num = 0;
  double normalize = 0.0;
  double variance_threshold = 0.0;
  int accepted = 0;
  std::uint64_t next_attempt = 0;
};

SearchState state_for(const Config& config) {
  SearchState state;
  state.seed = static_cast<std::uint64_t>(config.seed);
  state.point_num = config.point_num();
  state.normalize = config.normalize;
  state.variance_threshold = config.variance_threshold;
  return state;
}

void write_state(const std::filesystem::path& params_dir, const SearchState& state) {
  std::ostringstream text;
  text << kStateHeader << '\n'
       << "seed " << state.seed << '\n'
       << "point_num " << state.point_num << '\n'
       << "normalize " << format_double(state.normalize) << '\n'
       << "variance_threshold " << format_double(state.variance_threshold) << '\n'
       << "accepted " << state.accepted << '\n'
       << "next_attempt " << state.next_attempt << '\n';
  write_file_atomic(params_dir / kStateFileName, text.str());
}

// Reads the state file. Returns nullopt when it is missing, malformed or
// written for different search settings, which all mean "start again at attempt 0".
std::optional<SearchState> read_state(const std::filesystem::path& params_dir, const Config& config) {
  const std::filesystem::path path = params_dir / kStateFileName;
  if (!std::filesystem::exists(path)) return std::nullopt;

  std::istringstream text(read_file(path));
  std::string line;
  std::getline(text, line);
  if (line != kStateHeader) {
    spdlog::warn("class search state {} has an unknown header, so the search restarts at attempt 0", path.string());
    return std::nullopt;
  }

  SearchState state;
  std::string normalize_text, threshold_text;
  std::string key;
  bool complete = static_cast<bool>(text >> key) && key == "seed" && static_cast<bool>(text >> state.seed);
  complete = complete && (text >> key) && key == "point_num" && (text >> state.point_num);
  complete = complete && (text >> key) && key == "normalize" && (text >> normalize_text);
  complete = complete && (text >> key) && key == "variance_threshold" && (text >> threshold_text);
  complete = complete && (text >> key) && key == "accepted" && (text >> state.accepted);
  complete = complete && (text >> key) && key == "next_attempt" && (text >> state.next_attempt);
  if (!complete || state.accepted < 0) {
    spdlog::warn("class search state {} is malformed, so the search restarts at attempt 0", path.string());
    return std::nullopt;
  }

  const SearchState expected = state_for(config);
  const bool same_settings = state.seed == expected.seed && state.point_num == expected.point_num &&
                             normalize_text == format_double(expected.normalize) &&
                             threshold_text == format_double(expected.variance_threshold);
  if (!same_settings) {
    spdlog::info("class search state {} was written for other settings (seed {}, point_num {}), so the search "
                 "restarts at attempt 0 and keeps the existing class files",
                 path.string(), state.seed, state.point_num);
    return std::nullopt;
  }
  state.normalize = expected.normalize;
  state.variance_threshold = expected.variance_threshold;
  return state;
}

// Candidates for the next round: enough to finish at the accept rate seen so
// far, with 10% to spare, in whole multiples of the thread count, at most
// `batch_size`. The round size changes only the speed, never the result.
std::uint64_t round_size(int batch_size, int remaining, std::uint64_t attempts, std::uint64_t accepted) {
  const auto threads = static_cast<std::uint64_t>(std::max(1, omp_get_max_threads()));
  double target_size = 16.0 * remaining;
  if (accepted > 0) {
    const double rate = static_cast<double>(accepted) / static_cast<double>(attempts);
    target_size = std::ceil(1.1 * remaining / rate);
  }
  auto size = static_cast<std::uint64_t>(target_size);
  size = (size + threads - 1) / threads * threads;
  return std::clamp<std::uint64_t>(size, 1, static_cast<std::uint64_t>(batch_size));
}

}  // namespace

std::string class_csv_name(int category) { return fmt::format("{:06d}.csv", category); }

const char* verdict_name(CloudVerdict verdict) {
  switch (verdict) {
    case CloudVerdict::kAccepted: return "accepted";
    case CloudVerdict::kRunaway: return "runaway";
    case CloudVerdict::kFlatAxis: return "flat axis";
    case CloudVerdict::kLowVariance: return "low variance";
  }
  return "unknown";
}

CloudCheck check_class_cloud(const PointCloud& cloud, double normalize, double variance_threshold) {
  CloudCheck check;
  const std::size_t n = cloud.xyz.size() / 3;
  if (cloud.runaway) return check;
  for (double value : cloud.xyz) {
    if (!std::isfinite(value)) return check;
  }

  if (n == 0) {
    check.verdict = CloudVerdict::kFlatAxis;
    return check;
  }

  for (int axis = 0; axis < 3; ++axis) {
    // Per axis, as numpy does it: range and mean, then the normalised values
    // q = (p - mean) * scale, then var(q) = mean((q - mean(q))^2).
    double lo = cloud.xyz[axis], hi = cloud.xyz[axis], sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const double p = cloud.xyz[3 * i + axis];
      lo = std::min(lo, p);
      hi = std::max(hi, p);
      sum += p;
    }
    const double range = hi - lo;
    if (!std::isfinite(range) || !(range > 0.0)) {
      check.verdict = CloudVerdict::kFlatAxis;
      return check;
    }
    const double mean = sum / static_cast<double>(n);
    const double scale = 2.0 * normalize / range;

    double q_sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) q_sum += (cloud.xyz[3 * i + axis] - mean) * scale;
    const double q_mean = q_sum / static_cast<double>(n);
    double squares = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const double d = (cloud.xyz[3 * i + axis] - mean) * scale - q_mean;
      squares += d * d;
    }
    check.variance[axis] = squares / static_cast<double>(n);
  }

  const bool wide = std::all_of(check.variance.begin(), check.variance.end(),
                                [&](double v) { return v > variance_threshold; });
  check.verdict = wide ? CloudVerdict::kAccepted : CloudVerdict::kLowVariance;
  return check;
}

ClassCandidate evaluate_class_candidate(const Config& config, std::uint64_t attempt) {
  const auto seed = static_cast<std::uint64_t>(config.seed);
  ClassCandidate candidate;
  candidate.attempt = attempt;

  CounterRng params_rng(seed, RngPurpose::kClassParams, attempt);
  candidate.ifs = random_ifs(params_rng);

  CounterRng points_rng(seed, RngPurpose::kClassPoints, attempt);
  const PointCloud cloud = generate_points(candidate.ifs, config.point_num(), points_rng);
  candidate.check = check_class_cloud(cloud, config.normalize, config.variance_threshold);

  // Longer orbit of the same stream: its first point_num points are the cloud above.
  if (candidate.check.verdict == CloudVerdict::kAccepted && config.point_num() < kStabilityCheckPoints) {
    CounterRng long_rng(seed, RngPurpose::kClassPoints, attempt);
    if (generate_points(candidate.ifs, kStabilityCheckPoints, long_rng).runaway) {
      candidate.check.verdict = CloudVerdict::kRunaway;
    }
  }
  return candidate;
}

std::string format_class_csv(const Ifs& ifs) {
  std::string text;
  char buffer[64];
  for (const AffineMap& map : ifs.maps) {
    std::array<double, 13> row{};
    std::copy(map.matrix.begin(), map.matrix.end(), row.begin());
    std::copy(map.translation.begin(), map.translation.end(), row.begin() + 9);
    row[12] = map.probability;

    for (std::size_t i = 0; i < row.size(); ++i) {
      std::snprintf(buffer, sizeof buffer, "%.18e", row[i]);
      if (i > 0) text += ',';
      text += buffer;
    }
    text += '\n';
  }
  return text;
}

Ifs parse_class_csv(std::string_view text, const std::string& origin) {
  auto fail = [&](const std::string& defect) {
    return std::runtime_error("invalid class CSV " + origin + ": " + defect + "." + defect_hint());
  };

  // Lines, without a trailing "\r" and without blank lines at the end.
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  while (!lines.empty() && lines.back().find_first_not_of(" \t") == std::string_view::npos) lines.pop_back();
  if (lines.size() != 2) throw fail("expected 2 lines (one per map), found " + std::to_string(lines.size()));

  Ifs ifs;
  for (std::size_t row = 0; row < 2; ++row) {
    std::array<double, 13> values{};
    std::size_t count = 0;
    std::size_t field_start = 0;
    const std::string_view line = lines[row];
    while (true) {
      std::size_t field_end = line.find(',', field_start);
      if (field_end == std::string_view::npos) field_end = line.size();
      std::string_view field = line.substr(field_start, field_end - field_start);
      const std::size_t first = field.find_first_not_of(" \t");
      const std::size_t last = field.find_last_not_of(" \t");
      field = first == std::string_view::npos ? std::string_view{} : field.substr(first, last - first + 1);

      const std::string where = "line " + std::to_string(row + 1) + ", value " + std::to_string(count + 1);
      if (count == values.size()) {
        throw fail("line " + std::to_string(row + 1) + " has more than 13 comma-separated values");
      }
      double value = 0.0;
      const auto [end, error] = std::from_chars(field.data(), field.data() + field.size(), value);
      if (field.empty() || error != std::errc() || end != field.data() + field.size()) {
        throw fail(where + " '" + std::string(field) + "' is not a number");
      }
      if (!std::isfinite(value)) throw fail(where + " is " + std::string(field) + ", expected a finite number");
      values[count++] = value;

      if (field_end == line.size()) break;
      field_start = field_end + 1;
    }
    if (count != values.size()) {
      throw fail("line " + std::to_string(row + 1) + " has " + std::to_string(count) + " values, expected 13");
    }
    if (values[12] < 0.0 || values[12] > 1.0) {
      throw fail("line " + std::to_string(row + 1) + " has probability " + format_double(values[12]) +
                 ", expected a value in [0, 1]");
    }

    AffineMap& map = ifs.maps[row];
    std::copy(values.begin(), values.begin() + 9, map.matrix.begin());
    std::copy(values.begin() + 9, values.begin() + 12, map.translation.begin());
    map.probability = values[12];
  }
  return ifs;
}

void write_class_csv(const std::filesystem::path& path, const Ifs& ifs) {
  static constexpr const char* kFaults[] = {"class_write"};
  write_file_atomic(path, format_class_csv(ifs), kFaults);
}

Ifs read_class_csv(const std::filesystem::path& path) { return parse_class_csv(read_file(path), path.string()); }

std::vector<Ifs> search_classes(const std::filesystem::path& params_dir, const Config& config, int batch_size,
                                ClassSearchStats* stats_out, const RankShare& share) {
  const int n = config.n_categories;
  if (batch_size < 1) {
    throw std::invalid_argument("datagen batch size is " + std::to_string(batch_size) +
                                ", expected at least 1 (set --datagen-batch-size)");
  }
  if (n < 0) throw std::invalid_argument("n_categories is " + std::to_string(n) + ", expected at least 0");
  if (config.point_num() < 2) {
    throw std::invalid_argument("point_num is " + std::to_string(config.point_num()) +
                                ", so every cloud is a single point and no class can pass the variance test; "
                                "use problem_scale >= 3");
  }
  if (!(config.normalize > 0.0) || !(config.variance_threshold < config.normalize * config.normalize)) {
    // A normalised axis spans exactly 2 * normalize, so its variance is at most normalize^2.
    throw std::invalid_argument("variance_threshold " + format_double(config.variance_threshold) +
                                " with normalize " + format_double(config.normalize) +
                                " rejects every cloud: a normalised axis variance is at most normalize^2; lower "
                                "variance_threshold or raise normalize (> 0)");
  }
  if (share.is_root()) std::filesystem::create_directories(params_dir);

  // 1. The classes already on disk.
  std::vector<std::optional<Ifs>> existing(static_cast<std::size_t>(n));
  int present = 0;
  for (int k = 0; k < n; ++k) {
    const std::filesystem::path path = params_dir / class_csv_name(k);
    if (!std::filesystem::exists(path)) continue;
    existing[k] = read_class_csv(path);
    ++present;
  }

  ClassSearchStats stats;
  stats.reused = present;
  std::vector<Ifs> classes;
  classes.reserve(static_cast<std::size_t>(n));
  if (present == n) {
    for (const auto& ifs : existing) classes.push_back(*ifs);
    spdlog::info("class search: all {} classes exist in {}", n, params_dir.string());
    if (stats_out) *stats_out = stats;
    return classes;
  }

  // 2. Where to resume: the saved position when classes 0 .. accepted-1 are
  // all on disk, else attempt 0.
  SearchState state = state_for(config);
  if (const auto saved = read_state(params_dir, config)) {
    const bool prefix_present =
        saved->accepted <= n && std::all_of(existing.begin(), existing.begin() + saved->accepted,
                                            [](const auto& ifs) { return ifs.has_value(); });
    if (prefix_present) {
      state = *saved;
    } else {
      spdlog::info("class search state in {} refers to {} classes that are not all present, so the search restarts "
                   "at attempt 0",
                   params_dir.string(), saved->accepted);
    }
  }
  for (int k = 0; k < state.accepted; ++k) classes.push_back(*existing[k]);
  stats.first_attempt = state.next_attempt;
  spdlog::info("class search: {} of {} classes exist; resuming at class {}, attempt {}", present, n, state.accepted,
               state.next_attempt);

  // 3. Rounds: evaluate a block of attempts in parallel, then accept in order.
  const TraceRegion region("class_search");
  const auto started = std::chrono::steady_clock::now();
  Progress progress("class search", n - state.accepted, "classes");
  std::uint64_t attempts_since_acceptance = 0;
  std::uint64_t accepted_here = 0;
  while (static_cast<int>(classes.size()) < n) {
    const int remaining = n - static_cast<int>(classes.size());
    const std::uint64_t count = round_size(batch_size, remaining, stats.attempts, accepted_here);
    const std::uint64_t first = state.next_attempt;
    const std::size_t classes_before_round = classes.size();

    std::vector<ClassCandidate> candidates(count);
    // 1 + the verdict of each candidate this rank evaluated, 0 for the others.
    std::vector<std::int64_t> verdicts(count, 0);
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(count); ++i) {
      if (!share.owns(i)) continue;
      try {
        candidates[i] = evaluate_class_candidate(config, first + static_cast<std::uint64_t>(i));
        verdicts[i] = 1 + static_cast<std::int64_t>(candidates[i].check.verdict);
      } catch (...) {
#pragma omp critical(scaffold_class_search_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);

    // Every rank learns every verdict. The parameters of a candidate that
    // another rank evaluated are replayed from its attempt's own random stream,
    // which is cheap. Its point cloud is not needed again.
    share.sum_in_place(verdicts.data(), verdicts.size());
    for (std::size_t i = 0; i < count; ++i) {
      if (share.owns(static_cast<std::int64_t>(i))) continue;
      ClassCandidate& candidate = candidates[i];
      candidate.attempt = first + i;
      candidate.check.verdict = static_cast<CloudVerdict>(verdicts[i] - 1);
      CounterRng params_rng(static_cast<std::uint64_t>(config.seed), RngPurpose::kClassParams, candidate.attempt);
      candidate.ifs = random_ifs(params_rng);
    }

    std::uint64_t next_attempt = first + count;
    for (const ClassCandidate& candidate : candidates) {
      if (static_cast<int>(classes.size()) == n) break;
      ++stats.attempts;
      ++attempts_since_acceptance;
      next_attempt = candidate.attempt + 1;

      switch (candidate.check.verdict) {
        case CloudVerdict::kRunaway: ++stats.runaway; continue;
        case CloudVerdict::kFlatAxis: ++stats.flat_axis; continue;
        case CloudVerdict::kLowVariance: ++stats.low_variance; continue;
        case CloudVerdict::kAccepted: break;
      }
      if (std::find(classes.begin(), classes.end(), candidate.ifs) != classes.end()) {
        ++stats.duplicates;
        continue;
      }

      const int k = static_cast<int>(classes.size());
      if (existing[k]) {
        // A file already exists at this index (left by an earlier search with
        // other settings, or copied in), and it stays the class.
        if (!(*existing[k] == candidate.ifs)) {
          spdlog::info("class search: keeping existing class {} instead of the candidate from attempt {}", k,
                       candidate.attempt);
        }
        classes.push_back(*existing[k]);
      } else {
        if (share.is_root()) write_class_csv(params_dir / class_csv_name(k), candidate.ifs);
        classes.push_back(candidate.ifs);
        ++stats.written;
      }
      ++accepted_here;
      attempts_since_acceptance = 0;
    }

    // The position after the last accepted class, or after the round when the
    // search goes on, so a resumed search evaluates exactly the same attempts.
    state.accepted = static_cast<int>(classes.size());
    state.next_attempt = next_attempt;
    if (share.is_root()) write_state(params_dir, state);

    const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    progress.set_detail(fmt::format("{} attempts", stats.attempts));
    progress.advance(static_cast<std::int64_t>(classes.size() - classes_before_round));
    spdlog::debug("class search: {} of {} classes after {} attempts ({:.0f} candidates/s)", classes.size(), n,
                  stats.attempts, static_cast<double>(stats.attempts) / std::max(elapsed_s, 1e-9));

    if (attempts_since_acceptance >= kMaxAttemptsWithoutAcceptance) {
      throw std::runtime_error("class search accepted no candidate in " + std::to_string(attempts_since_acceptance) +
                               " consecutive attempts (variance_threshold " +
                               format_double(config.variance_threshold) + ", point_num " +
                               std::to_string(config.point_num()) + "); lower variance_threshold");
    }
  }

  progress.finish();
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const double rate = stats.attempts > 0 ? static_cast<double>(accepted_here) / static_cast<double>(stats.attempts) : 0;
  spdlog::info("class search: {} classes ({} written, {} reused) after {} attempts from attempt {}; accept rate "
               "{:.1f}%, {:.0f} candidates/s; rejected {} runaway, {} flat axis, {} low variance, {} duplicates",
               n, stats.written, stats.reused, stats.attempts, stats.first_attempt, 100.0 * rate,
               static_cast<double>(stats.attempts) / std::max(elapsed_s, 1e-9), stats.runaway, stats.flat_axis,
               stats.low_variance, stats.duplicates);
  if (stats_out) *stats_out = stats;
  return classes;
}

}  // namespace scaffold
