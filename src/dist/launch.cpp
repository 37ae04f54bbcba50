#include "dist/launch.hpp"

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <string_view>

namespace scaffold {
namespace {

constexpr std::array kRankVariables = {"RANK",   "MV2_COMM_WORLD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                       "PALS_RANKID", "SLURM_PROCID",   "FLUX_TASK_RANK"};
constexpr std::array kSizeVariables = {"WORLD_SIZE",  "MV2_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                                       "PALS_NRANKS", "SLURM_NTASKS",        "FLUX_JOB_SIZE"};
constexpr std::array kLocalRankVariables = {"LOCAL_RANK",     "MV2_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                                            "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID",         "SLURM_LOCALID",
                                            "FLUX_TASK_LOCAL_ID"};
constexpr std::array kLocalSizeVariables = {"LOCAL_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                                            "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE"};

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// The first variable in `names` whose value is an integer >= `minimum`.
template <std::size_t N>
void take_first(const EnvGetter& get_env, const std::array<const char*, N>& names, int minimum,
                std::optional<int>& value, std::string& source) {
  for (const char* name : names) {
    const std::optional<int> parsed = parse_env_int(get_env(name));
    if (parsed && *parsed >= minimum) {
      value = parsed;
      source = name;
      return;
    }
  }
}

// Tasks per node from a scheduler's task and node counts. Integer division
// matches the reference launcher.
// NOTE: when tasks are spread unevenly over nodes this is only the floor of
// the average, not this node's count.
void take_ratio(const EnvGetter& get_env, const char* tasks_name, const char* nodes_name,
                std::optional<int>& value, std::string& source) {
  const std::optional<int> tasks = parse_env_int(get_env(tasks_name));
  const std::optional<int> nodes = parse_env_int(get_env(nodes_name));
  if (!tasks || !nodes || *nodes < 1 || *tasks < *nodes) return;

  value = *tasks / *nodes;
  source = fmt::format("{}/{}", tasks_name, nodes_name);
}

}  // namespace

std::optional<int> parse_env_int(const char* value) {
  if (value == nullptr) return std::nullopt;

  std::string_view text(value);
  while (!text.empty() && is_blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_blank(text.back())) text.remove_suffix(1);
  if (text.empty()) return std::nullopt;

  // strtol skips leading blanks and accepts a sign, so the trimmed text must
  // be consumed completely for the value to count as an integer.
  const std::string digits(text);
  char* end = nullptr;
  errno = 0;
  const long parsed = std::strtol(digits.c_str(), &end, 10);
  if (errno != 0 || end != digits.c_str() + digits.size()) return std::nullopt;
  if (parsed < std::numeric_limits<int>::min() || parsed > std::numeric_limits<int>::max()) return std::nullopt;
  return static_cast<int>(parsed);
}

LaunchInfo discover_launch(const EnvGetter& get_env) {
  LaunchInfo launch;
  take_first(get_env, kRankVariables, 0, launch.rank, launch.rank_source);
  take_first(get_env, kSizeVariables, 1, launch.size, launch.size_source);
  take_first(get_env, kLocalRankVariables, 0, launch.local_rank, launch.local_rank_source);

  take_first(get_env, kLocalSizeVariables, 1, launch.local_size, launch.local_size_source);
  if (!launch.local_size) take_ratio(get_env, "SLURM_NTASKS", "SLURM_NNODES", launch.local_size, launch.local_size_source);
  if (!launch.local_size) take_ratio(get_env, "FLUX_JOB_SIZE", "FLUX_JOB_NNODES", launch.local_size, launch.local_size_source);
  return launch;
}

void check_launch_matches(const LaunchInfo& launch, int world_rank, int world_size, bool built_with_mpi) {
  const std::string advice =
      built_with_mpi
          ? "Start every process through one MPI-aware launcher (mpiexec, srun, flux run or torchrun-hpc) so that "
            "all of them join one MPI job; a plain torchrun starts independent one-rank MPI jobs. If the variable "
            "is left over from another job, unset it."
          : "This build has no MPI support and always runs as one process. Start it without a launcher, or "
            "install libopenmpi-dev, reconfigure with CMake and rebuild to run on several ranks.";

  if (launch.size && *launch.size != world_size) {
    throw LaunchError(fmt::format("the launcher reports a world size of {} ({}={}) but the process group has {} "
                                  "rank{}. {}",
                                  *launch.size, launch.size_source, *launch.size, world_size,
                                  world_size == 1 ? "" : "s", advice));
  }
  if (launch.rank && *launch.rank != world_rank) {
    throw LaunchError(fmt::format("the launcher reports rank {} ({}={}) but the process group assigned rank {} of {}. {}",
                                  *launch.rank, launch.rank_source, *launch.rank, world_rank, world_size, advice));
  }
}

}  // namespace scaffold
