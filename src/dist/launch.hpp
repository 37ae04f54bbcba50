// Discovery of world rank, world size, local rank and local size from the
// environment variables that launchers set (torchrun, MVAPICH, Open MPI,
// MPICH/PMI, Cray PALS, Slurm, Flux), and the check that the launcher's view
// agrees with MPI's.
#pragma once

#include <cstdlib>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

namespace scaffold {

// Reads one environment variable and returns nullptr when it is not set.
using EnvGetter = std::function<const char*(const char*)>;

// The process's place in the job as the launcher reports it. A field is empty
// when no variable for it contains a usable integer. Each `*_source` names the
// variable that provided the value, or both variables for a Slurm or Flux
// tasks-per-node ratio.
struct LaunchInfo {
  std::optional<int> rank;
  std::optional<int> size;
  std::optional<int> local_rank;
  std::optional<int> local_size;
  std::string rank_source;
  std::string size_source;
  std::string local_rank_source;
  std::string local_size_source;
};

// A launch whose environment contradicts the MPI world (or a build without MPI
// started as several processes). The message says how to start the job.
class LaunchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses an environment value as a decimal integer, allowing surrounding
// blanks. Returns nothing for nullptr, empty or non-integer text and for
// values outside int's range.
std::optional<int> parse_env_int(const char* value);

// Reads the launcher variables in priority order, and the first usable value
// wins. Ranks must be >= 0 and sizes >= 1, so other values are ignored like
// non-integers.
//   rank:       RANK, MV2_COMM_WORLD_RANK, OMPI_COMM_WORLD_RANK, PMI_RANK,
//               PALS_RANKID, SLURM_PROCID, FLUX_TASK_RANK
//   size:       WORLD_SIZE, MV2_COMM_WORLD_SIZE, OMPI_COMM_WORLD_SIZE, PMI_SIZE,
//               PALS_NRANKS, SLURM_NTASKS, FLUX_JOB_SIZE
//   local rank: LOCAL_RANK, MV2_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_RANK,
//               PMI_LOCAL_RANK, PALS_LOCAL_RANKID, SLURM_LOCALID, FLUX_TASK_LOCAL_ID
//   local size: LOCAL_WORLD_SIZE, MV2_COMM_WORLD_LOCAL_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE,
//               PMI_LOCAL_SIZE, PALS_LOCAL_SIZE, then SLURM_NTASKS / SLURM_NNODES,
//               then FLUX_JOB_SIZE / FLUX_JOB_NNODES
LaunchInfo discover_launch(const EnvGetter& get_env = [](const char* name) { return std::getenv(name); });

// Throws LaunchError when the launcher reports a world size or rank that
// differs from the process group's (`world_rank`, `world_size`). A job started
// by a launcher that is not MPI-aware (plain torchrun) produces this: every
// process becomes its own one-rank MPI world. `built_with_mpi` selects the
// advice in the message, because a build without MPI always runs one process.
void check_launch_matches(const LaunchInfo& launch, int world_rank, int world_size, bool built_with_mpi);

}  // namespace scaffold
