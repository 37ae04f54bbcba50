// Tests for launcher discovery, the launch check, failure messages and the
// process group's collectives. The binary runs as one process (ctest's
// per-test runs) and as two MPI ranks (the dist_mpi_2ranks test). Every
// expected value is computed from the rank count, so each check passes in both.
// The DistAbortScenario tests run only when ctest's scenario runs set
// SCAFFOLD_TEST_DIST_SCENARIO. They end the job on purpose, and ctest checks
// the message and that the job ends before its timeout.
#include "dist/errors.hpp"
#include "dist/launch.hpp"
#include "dist/process_group.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace scaffold {
namespace {

namespace fs = std::filesystem;

// The process group of the whole test binary, created in main.
ProcessGroup* group = nullptr;

using Environment = std::map<std::string, std::string>;

// An EnvGetter that reads `environment`, which must outlive the getter.
EnvGetter getter_for(const Environment& environment) {
  return [&environment](const char* name) -> const char* {
    const auto found = environment.find(name);
    return found == environment.end() ? nullptr : found->second.c_str();
  };
}

// The reference's priority order, written out here independently of launch.cpp.
const std::vector<std::string> kRankOrder = {"RANK",        "MV2_COMM_WORLD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                             "PALS_RANKID", "SLURM_PROCID",        "FLUX_TASK_RANK"};
const std::vector<std::string> kSizeOrder = {"WORLD_SIZE",  "MV2_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                                             "PALS_NRANKS", "SLURM_NTASKS",        "FLUX_JOB_SIZE"};
const std::vector<std::string> kLocalRankOrder = {
    "LOCAL_RANK",        "MV2_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
    "PALS_LOCAL_RANKID", "SLURM_LOCALID",             "FLUX_TASK_LOCAL_ID"};
const std::vector<std::string> kLocalSizeOrder = {"LOCAL_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                                                  "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE"};

TEST(ParseEnvInt, AcceptsDecimalIntegers) {
  EXPECT_EQ(parse_env_int("0"), 0);
  EXPECT_EQ(parse_env_int("17"), 17);
  EXPECT_EQ(parse_env_int(" 6\n"), 6);
  EXPECT_EQ(parse_env_int("-3"), -3);
  EXPECT_EQ(parse_env_int("2147483647"), 2147483647);
}

TEST(ParseEnvInt, RejectsOtherText) {
  for (const char* text : {"", "   ", "abc", "3x", "1.5", "0x10", "1 2", "2147483648", "99999999999999999999"}) {
    EXPECT_EQ(parse_env_int(text), std::nullopt) << "value: '" << text << "'";
  }
  EXPECT_EQ(parse_env_int(nullptr), std::nullopt);
}

TEST(DiscoverLaunch, NoLauncherVariables) {
  const Environment environment = {{"HOME", "/root"}, {"PATH", "/usr/bin"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  EXPECT_EQ(launch.rank, std::nullopt);
  EXPECT_EQ(launch.size, std::nullopt);
  EXPECT_EQ(launch.local_rank, std::nullopt);
  EXPECT_EQ(launch.local_size, std::nullopt);
  EXPECT_EQ(launch.rank_source, "");
}

TEST(DiscoverLaunch, TorchrunVariables) {
  const Environment environment = {
      {"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  EXPECT_EQ(launch.rank, 5);
  EXPECT_EQ(launch.size, 8);
  EXPECT_EQ(launch.local_rank, 1);
  EXPECT_EQ(launch.local_size, 4);
  EXPECT_EQ(launch.rank_source, "RANK");
  EXPECT_EQ(launch.local_size_source, "LOCAL_WORLD_SIZE");
}

TEST(DiscoverLaunch, OpenMpiVariables) {
  const Environment environment = {{"OMPI_COMM_WORLD_RANK", "3"},
                                   {"OMPI_COMM_WORLD_SIZE", "6"},
                                   {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                                   {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  EXPECT_EQ(launch.rank, 3);
  EXPECT_EQ(launch.size, 6);
  EXPECT_EQ(launch.local_rank, 0);
  EXPECT_EQ(launch.local_size, 3);
  EXPECT_EQ(launch.rank_source, "OMPI_COMM_WORLD_RANK");
  EXPECT_EQ(launch.size_source, "OMPI_COMM_WORLD_SIZE");
  EXPECT_EQ(launch.local_rank_source, "OMPI_COMM_WORLD_LOCAL_RANK");
  EXPECT_EQ(launch.local_size_source, "OMPI_COMM_WORLD_LOCAL_SIZE");
}

TEST(DiscoverLaunch, SlurmVariables) {
  const Environment environment = {
      {"SLURM_PROCID", "9"}, {"SLURM_NTASKS", "12"}, {"SLURM_LOCALID", "2"}, {"SLURM_NNODES", "3"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  EXPECT_EQ(launch.rank, 9);
  EXPECT_EQ(launch.size, 12);
  EXPECT_EQ(launch.local_rank, 2);
  EXPECT_EQ(launch.local_size, 4);
  EXPECT_EQ(launch.local_size_source, "SLURM_NTASKS/SLURM_NNODES");
}

TEST(DiscoverLaunch, FluxVariables) {
  const Environment environment = {
      {"FLUX_TASK_RANK", "7"}, {"FLUX_JOB_SIZE", "16"}, {"FLUX_TASK_LOCAL_ID", "3"}, {"FLUX_JOB_NNODES", "2"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  EXPECT_EQ(launch.rank, 7);
  EXPECT_EQ(launch.size, 16);
  EXPECT_EQ(launch.local_rank, 3);
  EXPECT_EQ(launch.local_size, 8);
  EXPECT_EQ(launch.local_size_source, "FLUX_JOB_SIZE/FLUX_JOB_NNODES");
}

TEST(DiscoverLaunch, EmptyAndNonIntegerValuesIgnored) {
  for (const char* bad : {"", " ", "two", "1.0", "4rank", "-1"}) {
    const Environment environment = {{"RANK", bad},
                                     {"OMPI_COMM_WORLD_RANK", "1"},
                                     {"WORLD_SIZE", bad},
                                     {"OMPI_COMM_WORLD_SIZE", "2"},
                                     {"LOCAL_RANK", bad},
                                     {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                     {"LOCAL_WORLD_SIZE", bad},
                                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}};
    const LaunchInfo launch = discover_launch(getter_for(environment));

    EXPECT_EQ(launch.rank, 1) << "RANK='" << bad << "'";
    EXPECT_EQ(launch.rank_source, "OMPI_COMM_WORLD_RANK") << "RANK='" << bad << "'";
    EXPECT_EQ(launch.size, 2) << "WORLD_SIZE='" << bad << "'";
    EXPECT_EQ(launch.local_rank, 1) << "LOCAL_RANK='" << bad << "'";
    EXPECT_EQ(launch.local_size, 2) << "LOCAL_WORLD_SIZE='" << bad << "'";
  }
}

TEST(DiscoverLaunch, ZeroSizeIgnored) {
  const Environment environment = {{"WORLD_SIZE", "0"}, {"SLURM_NTASKS", "4"}, {"LOCAL_WORLD_SIZE", "0"},
                                   {"SLURM_NNODES", "2"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  EXPECT_EQ(launch.size, 4);
  EXPECT_EQ(launch.size_source, "SLURM_NTASKS");
  EXPECT_EQ(launch.local_size, 2);
}

// Sets every variable of `order` to a distinct value, then removes them one by
// one from the front. Each time, the next variable in the order must win.
void expect_priority(const std::vector<std::string>& order, std::optional<int> LaunchInfo::*field,
                     std::string LaunchInfo::*source) {
  Environment environment;
  for (std::size_t i = 0; i < order.size(); ++i) environment[order[i]] = std::to_string(100 + i);

  for (std::size_t winner = 0; winner < order.size(); ++winner) {
    const LaunchInfo launch = discover_launch(getter_for(environment));
    EXPECT_EQ(launch.*field, static_cast<int>(100 + winner)) << "expected " << order[winner] << " to win";
    EXPECT_EQ(launch.*source, order[winner]);
    environment.erase(order[winner]);
  }

  const LaunchInfo launch = discover_launch(getter_for(environment));
  EXPECT_EQ(launch.*field, std::nullopt);
}

TEST(DiscoverLaunch, RankPriorityOrder) { expect_priority(kRankOrder, &LaunchInfo::rank, &LaunchInfo::rank_source); }

TEST(DiscoverLaunch, SizePriorityOrder) { expect_priority(kSizeOrder, &LaunchInfo::size, &LaunchInfo::size_source); }

TEST(DiscoverLaunch, LocalRankPriorityOrder) {
  expect_priority(kLocalRankOrder, &LaunchInfo::local_rank, &LaunchInfo::local_rank_source);
}

TEST(DiscoverLaunch, LocalSizePriorityOrder) {
  expect_priority(kLocalSizeOrder, &LaunchInfo::local_size, &LaunchInfo::local_size_source);
}

TEST(DiscoverLaunch, LocalSizeFallbacksInOrder) {
  Environment environment = {{"PMI_LOCAL_SIZE", "5"},
                             {"SLURM_NTASKS", "12"},
                             {"SLURM_NNODES", "4"},
                             {"FLUX_JOB_SIZE", "12"},
                             {"FLUX_JOB_NNODES", "6"}};
  EXPECT_EQ(discover_launch(getter_for(environment)).local_size, 5);

  environment.erase("PMI_LOCAL_SIZE");
  EXPECT_EQ(discover_launch(getter_for(environment)).local_size, 3);

  environment["SLURM_NNODES"] = "0";
  EXPECT_EQ(discover_launch(getter_for(environment)).local_size, 2);

  environment["FLUX_JOB_NNODES"] = "many";
  EXPECT_EQ(discover_launch(getter_for(environment)).local_size, std::nullopt);
}

TEST(CheckLaunch, SizeMismatchRejected) {
  // What a plain torchrun produces: the launcher reports 4 ranks, but every
  // process is its own one-rank MPI world.
  const Environment environment = {{"WORLD_SIZE", "4"}, {"RANK", "2"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  try {
    check_launch_matches(launch, 0, 1, true);
    FAIL() << "check_launch_matches accepted a world size of 4 against 1 MPI rank";
  } catch (const LaunchError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("world size of 4 (WORLD_SIZE=4)"), std::string::npos) << message;
    EXPECT_NE(message.find("has 1 rank."), std::string::npos) << message;
    EXPECT_NE(message.find("MPI-aware launcher"), std::string::npos) << message;
  }
}

TEST(CheckLaunch, RankMismatchRejected) {
  const Environment environment = {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  try {
    check_launch_matches(launch, 0, 2, true);
    FAIL() << "check_launch_matches accepted launcher rank 1 against MPI rank 0";
  } catch (const LaunchError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("rank 1 (OMPI_COMM_WORLD_RANK=1)"), std::string::npos) << message;
    EXPECT_NE(message.find("assigned rank 0 of 2"), std::string::npos) << message;
  }
}

TEST(CheckLaunch, MatchingLaunchAccepted) {
  const Environment environment = {{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}};
  EXPECT_NO_THROW(check_launch_matches(discover_launch(getter_for(environment)), 3, 4, true));
  EXPECT_NO_THROW(check_launch_matches(LaunchInfo{}, 0, 1, true));
  EXPECT_NO_THROW(check_launch_matches(LaunchInfo{}, 5, 8, true));
}

TEST(CheckLaunch, BuildWithoutMpiRejectsSeveralRanks) {
  const Environment environment = {{"FLUX_TASK_RANK", "0"}, {"FLUX_JOB_SIZE", "2"}};
  const LaunchInfo launch = discover_launch(getter_for(environment));

  try {
    check_launch_matches(launch, 0, 1, false);
    FAIL() << "a build without MPI accepted a launch of 2 ranks";
  } catch (const LaunchError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("FLUX_JOB_SIZE=2"), std::string::npos) << message;
    EXPECT_NE(message.find("no MPI support"), std::string::npos) << message;
  }
  EXPECT_NO_THROW(check_launch_matches(LaunchInfo{}, 0, 1, false));
}

TEST(FormatRankFailures, OneRank) {
  EXPECT_EQ(format_rank_failures("dataset generation", {{1, "disk full"}}, 2),
            "dataset generation failed on rank 1: disk full");
}

TEST(FormatRankFailures, IdenticalMessagesGrouped) {
  const std::vector<RankFailure> failures = {{3, "A"}, {0, "A"}, {2, "B"}, {1, "A"}, {6, "A"}};
  EXPECT_EQ(format_rank_failures("training", failures, 8),
            "training failed on 5 of 8 ranks: ranks 0-1, 3, 6: A; rank 2: B");
}

TEST(FormatRankFailures, DistinctMessagesCapped) {
  std::vector<RankFailure> failures;
  for (int r = 0; r < 10; ++r) failures.push_back({r, fmt::format("error {}", r)});
  EXPECT_EQ(format_rank_failures("scan", failures, 10, 2),
            "scan failed on 10 of 10 ranks: rank 0: error 0; rank 1: error 1; and 8 more distinct messages in the "
            "failed ranks' logs");
}

TEST(DistributedErrorType, KeepsPhaseAndFailures) {
  const DistributedError error("checkpoint", {{2, "no space"}}, 4);
  EXPECT_STREQ(error.what(), "checkpoint failed on rank 2: no space");
  EXPECT_EQ(error.phase(), "checkpoint");
  ASSERT_EQ(error.failures().size(), 1u);
  EXPECT_EQ(error.failures()[0].rank, 2);
  EXPECT_EQ(error.world_size(), 4);
}

TEST(LocalGroup, CollectivesLeaveDataUnchanged) {
  const auto local = ProcessGroup::create_local();
  EXPECT_EQ(local->rank(), 0);
  EXPECT_EQ(local->size(), 1);
  EXPECT_TRUE(local->is_root());

  double values[2] = {1.5, -2.0};
  local->all_reduce_sum(values, 2);
  EXPECT_EQ(values[0], 1.5);
  EXPECT_EQ(values[1], -2.0);

  std::string text = "unchanged";
  local->broadcast(text, 0);
  EXPECT_EQ(text, "unchanged");
  EXPECT_EQ(local->all_gather("only"), std::vector<std::string>{"only"});
  EXPECT_THROW(local->broadcast(text, 1), std::invalid_argument);

  float bucket[3] = {1, 2, 3};
  AllReduceRequest request = local->iall_reduce_sum(bucket, 3);
  EXPECT_FALSE(request.pending());
  EXPECT_EQ(bucket[2], 3.0f);
}

TEST(LocalGroup, FailureBecomesDistributedError) {
  const auto local = ProcessGroup::create_local();
  try {
    collective_try(*local, "validation", [] { throw std::runtime_error("NaN loss"); });
    FAIL() << "collective_try did not rethrow";
  } catch (const DistributedError& error) {
    EXPECT_STREQ(error.what(), "validation failed on rank 0: NaN loss");
  }
}

TEST(ProcessGroupWorld, RankAndSize) {
  EXPECT_GE(group->rank(), 0);
  EXPECT_LT(group->rank(), group->size());
  EXPECT_EQ(group->is_root(), group->rank() == 0);
  EXPECT_GE(group->local_rank(), 0);
  EXPECT_LT(group->local_rank(), group->local_size());

  // Under mpiexec, Open MPI's own variables must agree with the group.
  if (const std::optional<int> size = parse_env_int(std::getenv("OMPI_COMM_WORLD_SIZE"))) {
    EXPECT_EQ(group->size(), *size);
    EXPECT_EQ(group->rank(), parse_env_int(std::getenv("OMPI_COMM_WORLD_RANK")));
  }
}

TEST(ProcessGroupWorld, InitTwiceRejected) {
  int argc = 0;
  char** argv = nullptr;
  EXPECT_THROW(ProcessGroup::init(&argc, &argv), std::logic_error);
}

TEST(ProcessGroupWorld, AllReduceSumDouble) {
  const int rank = group->rank();
  std::vector<double> values(5);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = (rank + 1) * (i + 1.0) + 0.25 * rank;

  group->all_reduce_sum(values.data(), values.size());

  for (std::size_t i = 0; i < values.size(); ++i) {
    double expected = 0;
    for (int r = 0; r < group->size(); ++r) expected += (r + 1) * (i + 1.0) + 0.25 * r;
    EXPECT_DOUBLE_EQ(values[i], expected) << "element " << i;
  }
}

TEST(ProcessGroupWorld, AllReduceSumFloatLargeBuffer) {
  // Small integers are exact in float, so any summation order gives the same result.
  const std::size_t count = (std::size_t{1} << 20) + 3;
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; ++i) values[i] = static_cast<float>(group->rank() + static_cast<int>(i % 7));

  group->all_reduce_sum(values.data(), count);

  int rank_sum = 0;
  for (int r = 0; r < group->size(); ++r) rank_sum += r;
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const float expected = static_cast<float>(rank_sum + group->size() * static_cast<int>(i % 7));
    if (values[i] != expected) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(values[count - 1], static_cast<float>(rank_sum + group->size() * static_cast<int>((count - 1) % 7)));
}

TEST(ProcessGroupWorld, AllReduceSumInt64Exact) {
  // Values above 2^53 would lose their low bits if reduced as double.
  const std::int64_t base = std::int64_t{1} << 60;
  std::vector<std::int64_t> values = {base + 3 * group->rank() + 1, -base + group->rank()};

  group->all_reduce_sum(values.data(), values.size());

  std::int64_t expected0 = 0;
  std::int64_t expected1 = 0;
  for (int r = 0; r < group->size(); ++r) {
    expected0 += base + 3 * r + 1;
    expected1 += -base + r;
  }
  EXPECT_EQ(values[0], expected0);
  EXPECT_EQ(values[1], expected1);
}

TEST(ProcessGroupWorld, AllReduceMinMax) {
  // Rank-dependent values whose extremes fall on different ranks per element.
  const auto value_of = [](int rank, int element) { return ((rank * 7 + element * 3) % 5) - 2 + 0.5 * element; };
  const int rank = group->rank();
  std::vector<double> low(4), high(4);
  std::vector<float> low_float(4), high_float(4);
  std::vector<std::int64_t> low_int(4), high_int(4);
  for (int i = 0; i < 4; ++i) {
    low[i] = high[i] = value_of(rank, i);
    low_float[i] = high_float[i] = static_cast<float>(value_of(rank, i));
    low_int[i] = high_int[i] = static_cast<std::int64_t>(value_of(rank, i) * 2);
  }

  group->all_reduce_min(low.data(), 4);
  group->all_reduce_max(high.data(), 4);
  group->all_reduce_min(low_float.data(), 4);
  group->all_reduce_max(high_float.data(), 4);
  group->all_reduce_min(low_int.data(), 4);
  group->all_reduce_max(high_int.data(), 4);

  for (int i = 0; i < 4; ++i) {
    double expected_low = value_of(0, i);
    double expected_high = value_of(0, i);
    for (int r = 1; r < group->size(); ++r) {
      expected_low = std::min(expected_low, value_of(r, i));
      expected_high = std::max(expected_high, value_of(r, i));
    }
    EXPECT_EQ(low[i], expected_low) << "element " << i;
    EXPECT_EQ(high[i], expected_high) << "element " << i;
    EXPECT_EQ(low_float[i], static_cast<float>(expected_low)) << "element " << i;
    EXPECT_EQ(high_float[i], static_cast<float>(expected_high)) << "element " << i;
    EXPECT_EQ(low_int[i], static_cast<std::int64_t>(expected_low * 2)) << "element " << i;
    EXPECT_EQ(high_int[i], static_cast<std::int64_t>(expected_high * 2)) << "element " << i;
  }
}

TEST(ProcessGroupWorld, BroadcastStringFromEveryRoot) {
  for (int root = 0; root < group->size(); ++root) {
    // The payload contains a NUL byte, and other ranks start with a longer value.
    const std::string payload = std::string("config from root ") + std::to_string(root) + std::string("\0tail", 5);
    std::string text = group->rank() == root ? payload : std::string(200, '?');

    group->broadcast(text, root);

    EXPECT_EQ(text, payload) << "root " << root;
  }
}

TEST(ProcessGroupWorld, UnboundedCollectivesGiveSameResults) {
  // Without a timeout, all-reduce and broadcast take the blocking MPI calls.
  const std::chrono::milliseconds previous = group->collective_timeout();
  group->set_collective_timeout(std::chrono::milliseconds(0));

  std::vector<double> values = {1.0 + group->rank(), -0.5 * group->rank()};
  group->all_reduce_sum(values.data(), values.size());
  std::string text = group->is_root() ? "unbounded" : "";
  group->broadcast(text, 0);
  group->set_collective_timeout(previous);

  double expected0 = 0;
  double expected1 = 0;
  for (int r = 0; r < group->size(); ++r) {
    expected0 += 1.0 + r;
    expected1 += -0.5 * r;
  }
  EXPECT_EQ(values[0], expected0);
  EXPECT_EQ(values[1], expected1);
  EXPECT_EQ(text, "unbounded");
}

TEST(ProcessGroupWorld, BroadcastEmptyString) {
  std::string text = group->is_root() ? "" : "stale";
  group->broadcast(text, 0);
  EXPECT_EQ(text, "");
}

TEST(ProcessGroupWorld, BroadcastBytes) {
  const int root = group->size() - 1;
  std::vector<std::int32_t> values(1000, 0);
  if (group->rank() == root) {
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<std::int32_t>(i * i) + root;
  }

  group->broadcast_bytes(values.data(), values.size() * sizeof(std::int32_t), root);

  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(values[i], static_cast<std::int32_t>(i * i) + root) << "element " << i;
  }
}

TEST(ProcessGroupWorld, BroadcastRootOutOfRangeRejected) {
  std::string text = "x";
  EXPECT_THROW(group->broadcast(text, group->size()), std::invalid_argument);
  EXPECT_THROW(group->broadcast(text, -1), std::invalid_argument);
}

TEST(ProcessGroupWorld, AllGatherStringsOfDifferentLengths) {
  // Rank r sends r 'x' characters and its rank, so rank 0 sends the shortest.
  const auto text_of = [](int rank) { return std::string(static_cast<std::size_t>(rank), 'x') + std::to_string(rank); };

  const std::vector<std::string> gathered = group->all_gather(text_of(group->rank()));

  ASSERT_EQ(gathered.size(), static_cast<std::size_t>(group->size()));
  for (int r = 0; r < group->size(); ++r) EXPECT_EQ(gathered[static_cast<std::size_t>(r)], text_of(r));
}

TEST(ProcessGroupWorld, AllGatherEmptyStrings) {
  const std::vector<std::string> gathered = group->all_gather("");
  EXPECT_EQ(gathered, std::vector<std::string>(static_cast<std::size_t>(group->size())));
}

TEST(ProcessGroupWorld, IallReduceSumTwoBuckets) {
  const int rank = group->rank();
  std::vector<float> first(1000), second(37);
  for (std::size_t i = 0; i < first.size(); ++i) first[i] = static_cast<float>(rank * 1000 + static_cast<int>(i));
  for (std::size_t i = 0; i < second.size(); ++i) second[i] = static_cast<float>(rank + 1);

  AllReduceRequest first_request = group->iall_reduce_sum(first.data(), first.size());
  AllReduceRequest second_request = group->iall_reduce_sum(second.data(), second.size());
  second_request.wait();
  while (!first_request.test()) {
  }

  EXPECT_FALSE(first_request.pending());
  EXPECT_FALSE(second_request.pending());
  int rank_sum = 0;
  for (int r = 0; r < group->size(); ++r) rank_sum += r;
  for (std::size_t i = 0; i < first.size(); ++i) {
    ASSERT_EQ(first[i], static_cast<float>(rank_sum * 1000 + group->size() * static_cast<int>(i))) << "element " << i;
  }
  for (std::size_t i = 0; i < second.size(); ++i) {
    ASSERT_EQ(second[i], static_cast<float>(rank_sum + group->size())) << "element " << i;
  }
}

TEST(ProcessGroupWorld, IallReduceRequestWaitsWhenDestroyed) {
  std::vector<float> values(64, 1.0f);
  { AllReduceRequest request = group->iall_reduce_sum(values.data(), values.size()); }
  EXPECT_EQ(values[63], static_cast<float>(group->size()));
}

TEST(ProcessGroupWorld, BarrierOrdersFileWrites) {
  // Every rank writes its marker before the barrier, so after it each rank
  // must see the markers of all ranks.
  std::string directory;
  if (group->is_root()) {
    std::string pattern = (fs::temp_directory_path() / "scaffold-dist-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    directory = pattern;
  }
  group->broadcast(directory, 0);
  std::ofstream(fs::path(directory) / std::to_string(group->rank())) << "written";

  group->barrier();

  for (int r = 0; r < group->size(); ++r) EXPECT_TRUE(fs::exists(fs::path(directory) / std::to_string(r))) << r;
  group->barrier();
  if (group->is_root()) fs::remove_all(directory);
}

TEST(CollectiveTry, SuccessReturnsBodyResult) {
  int calls = 0;
  const int result = collective_try(*group, "counting", [&] {
    ++calls;
    return group->rank() * 2;
  });
  EXPECT_EQ(result, group->rank() * 2);
  EXPECT_EQ(calls, 1);
}

TEST(CollectiveTry, LastRankFailureReachesEveryRank) {
  const int failing = group->size() - 1;
  try {
    collective_try(*group, "dataset generation", [&] {
      if (group->rank() == failing) throw std::runtime_error(fmt::format("disk full on rank {}", failing));
    });
    FAIL() << "rank " << group->rank() << " returned from collective_try although rank " << failing << " threw";
  } catch (const DistributedError& error) {
    EXPECT_EQ(std::string(error.what()),
              fmt::format("dataset generation failed on rank {}: disk full on rank {}", failing, failing));
    ASSERT_EQ(error.failures().size(), 1u);
    EXPECT_EQ(error.failures()[0].rank, failing);
    EXPECT_EQ(error.phase(), "dataset generation");
    EXPECT_EQ(error.world_size(), group->size());
  }
}

TEST(CollectiveTry, EveryRankFailureListed) {
  try {
    collective_try(*group, "checkpoint", [&] { throw std::runtime_error(fmt::format("error {}", group->rank())); });
    FAIL() << "collective_try returned although every rank threw";
  } catch (const DistributedError& error) {
    ASSERT_EQ(error.failures().size(), static_cast<std::size_t>(group->size()));
    const std::string message = error.what();
    for (int r = 0; r < group->size(); ++r) {
      EXPECT_NE(message.find(fmt::format("rank {}: error {}", r, r)), std::string::npos) << message;
    }
  }
}

TEST(CollectiveTry, NonStandardExceptionReported) {
  try {
    collective_try(*group, "scan", [&] {
      if (group->is_root()) throw 42;
    });
    FAIL() << "collective_try returned although rank 0 threw";
  } catch (const DistributedError& error) {
    EXPECT_EQ(std::string(error.what()), "scan failed on rank 0: exception of a type not derived from std::exception");
  }
}

TEST(CollectiveTry, GroupUsableAfterFailure) {
  EXPECT_THROW(collective_try(*group, "first", [] { throw std::runtime_error("x"); }), DistributedError);

  std::int64_t count = 1;
  group->all_reduce_sum(&count, 1);
  EXPECT_EQ(count, group->size());
  EXPECT_NO_THROW(collective_try(*group, "second", [] {}));
}

// The scenarios below end the job on purpose, as the file comment describes.
std::string scenario() {
  const char* value = std::getenv("SCAFFOLD_TEST_DIST_SCENARIO");
  return value == nullptr ? "" : value;
}

TEST(DistAbortScenario, AbortOutsideCollective) {
  if (scenario() != "abort_outside_collective" || group->size() != 2) {
    GTEST_SKIP() << "runs only as ctest's dist_mpi_abort_outside_collective (2 ranks)";
  }
  if (group->rank() == 1) group->abort("simulated failure outside a collective");

  group->barrier();
  FAIL() << "rank 0 left the barrier although rank 1 aborted the job";
}

TEST(DistAbortScenario, CollectiveTimeout) {
  if (scenario() != "collective_timeout" || group->size() != 2) {
    GTEST_SKIP() << "runs only as ctest's dist_mpi_collective_timeout (2 ranks)";
  }
  if (group->rank() == 1) {
    // Rank 1 stops responding, so rank 0's all-reduce must end the job.
    std::this_thread::sleep_for(std::chrono::seconds(300));
  }

  group->set_collective_timeout(std::chrono::seconds(2));
  double value = 1;
  group->all_reduce_sum(&value, 1);
  FAIL() << "rank " << group->rank() << " finished an all-reduce that rank 1 never joined";
}

TEST(DistAbortScenario, UncaughtException) {
  if (scenario() != "uncaught_exception" || group->size() != 2) {
    GTEST_SKIP() << "runs only as ctest's dist_mpi_uncaught_exception (2 ranks)";
  }
  if (group->rank() == 1) {
    // What happens when an exception escapes main: std::terminate with the
    // exception still current.
    try {
      throw std::runtime_error("simulated exception escaping main");
    } catch (...) {
      std::terminate();
    }
  }

  group->barrier();
  FAIL() << "rank 0 left the barrier although rank 1 terminated";
}

// On ranks other than 0 only failures are printed, prefixed with the rank, so
// that two ranks' progress lines do not interleave.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace scaffold

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Listing the tests (gtest_discover_tests at build time) needs no MPI.
  if (GTEST_FLAG_GET(list_tests)) return RUN_ALL_TESTS();

  auto process_group = scaffold::ProcessGroup::init(&argc, &argv);
  // A failed check on one rank can leave the other waiting in the next
  // collective, and a short timeout turns that into an abort with a message.
  process_group->set_collective_timeout(std::chrono::seconds(60));
  scaffold::group = process_group.get();

  if (!process_group->is_root()) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new scaffold::FailurePrinter(process_group->rank()));
  }

  // The job fails when a test failed on any rank.
  std::int64_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  process_group->all_reduce_max(&failed, 1);
  return failed != 0 ? 1 : 0;
}
