// Exceptions raised by the process group: a failed MPI call on one rank, and
// an error that every rank raises together after error consensus.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace scaffold {

// A failed MPI call. The message names the call, the rank and MPI's error string.
// Only the rank whose call failed raises it, so the others may still wait in a
// collective: the caller should end the job with ProcessGroup::abort.
class MpiError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One rank's error message, as gathered by error consensus.
struct RankFailure {
  int rank = 0;
  std::string message;
};

// An error that every rank of the group raises at the same point, after error
// consensus found that one or more ranks failed in `phase`. Because all ranks
// agree, the job can end normally (with MPI_Finalize) instead of aborting.
class DistributedError : public std::runtime_error {
 public:
  DistributedError(std::string phase, std::vector<RankFailure> failures, int world_size);

  const std::string& phase() const { return phase_; }
  // Failed ranks in increasing rank order, each with its message.
  const std::vector<RankFailure>& failures() const { return failures_; }
  int world_size() const { return world_size_; }

 private:
  std::string phase_;
  std::vector<RankFailure> failures_;
  int world_size_;
};

// Formats the message of a DistributedError: "<phase> failed on rank 1: <message>"
// for one failed rank. For several, ranks with identical messages share one entry:
// "<phase> failed on 3 of 4 ranks: ranks 0-1: <message>; rank 3: <message>".
// At most `max_entries` distinct messages are listed, then a count of the rest.
std::string format_rank_failures(std::string_view phase, const std::vector<RankFailure>& failures, int world_size,
                                 std::size_t max_entries = 8);

}  // namespace scaffold
