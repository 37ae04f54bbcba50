// The process group: every process of a job, connected through MPI when the
// build has it. Collectives take host buffers and work in place. With one
// rank, or in a build without MPI, every collective is a local no-op.
//
// Threading: MPI is initialized with MPI_THREAD_FUNNELED, so every call on a
// process group must come from the thread that called ProcessGroup::init.
//
// Failures never hang a job:
//   * collective_try runs a phase and then reaches error consensus, so an
//     exception on any rank becomes the same DistributedError on every rank;
//   * an error that stays on one rank (anything but DistributedError) must end
//     the job with ProcessGroup::abort, which calls MPI_Abort;
//   * an exception that escapes main, or a process group destroyed while an
//     exception propagates, aborts the job as well;
//   * every wait inside a collective is bounded by the collective timeout;
//     when it expires, the waiting rank aborts the job with a message.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "dist/errors.hpp"
#include "dist/launch.hpp"

namespace scaffold {

class ProcessGroup;

// A non-blocking sum all-reduce in flight. The buffer given to
// ProcessGroup::iall_reduce_sum must stay alive and unread until wait()
// returns. The destructor waits for a request that is still pending.
// NOTE: Open MPI advances non-blocking collectives only inside MPI calls, so
// overlapping the reduction with computation needs calls to test() meanwhile.
class AllReduceRequest {
 public:
  // A request that is already complete (what a one-rank group returns).
  AllReduceRequest();
  AllReduceRequest(AllReduceRequest&& other) noexcept;
  AllReduceRequest& operator=(AllReduceRequest&& other) noexcept;
  AllReduceRequest(const AllReduceRequest&) = delete;
  AllReduceRequest& operator=(const AllReduceRequest&) = delete;
  ~AllReduceRequest();

  // Advances the reduction and returns true once it is complete.
  bool test();
  // Blocks until the reduction is complete, bounded by the collective timeout.
  void wait();
  bool pending() const;

 private:
  friend class ProcessGroup;
  struct State;
  explicit AllReduceRequest(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class ProcessGroup {
 public:
  // Same default as torch.distributed's default_pg_timeout (30 minutes): long
  // enough for ranks that reach a collective at very different times.
  static constexpr std::chrono::milliseconds kDefaultCollectiveTimeout{30 * 60 * 1000};

  // Initializes MPI (MPI_Init_thread, MPI_THREAD_FUNNELED) and builds the group
  // of all ranks. Call once per process, before anything else touches MPI.
  // If the launcher's variables (see discover_launch) contradict MPI's world,
  // the process prints the reason and aborts the job at once. In a build
  // without MPI the group has one rank, and a launcher that reports several
  // ranks raises LaunchError, because independent copies would race on the
  // same run directory.
  static std::unique_ptr<ProcessGroup> init(int* argc, char*** argv, const EnvGetter& get_env = [](const char* name) {
    return std::getenv(name);
  });

  // A one-rank group that never touches MPI, for tools and tests that run a
  // single process.
  static std::unique_ptr<ProcessGroup> create_local();

  // Whether this build can run on several ranks.
  static bool built_with_mpi();

  // Finalizes MPI when init started it. When an exception is propagating and
  // the group has several ranks, aborts the job instead, because the other
  // ranks may be waiting in a collective that this rank will never join.
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Rank among the processes on this node, from the launcher's variables, or
  // from MPI's shared-memory split when the launcher sets none.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  bool is_root() const { return rank_ == 0; }

  // Bounds every wait inside a collective, and zero waits without a bound. A
  // bounded collective runs as a non-blocking MPI call that is tested until it
  // completes. Without a bound, all-reduce and broadcast use the blocking MPI
  // calls instead.
  // NOTE: with Open MPI 4.1's default choice of algorithm, MPI_Iallreduce was
  // 1.5-2.6x slower than MPI_Allreduce for 256 KiB to 64 MiB on 2 ranks
  // (bench_allreduce, 2-core machine). Setting
  // OMPI_MCA_coll_libnbc_iallreduce_algorithm=1 (ring) closed the gap there.
  void set_collective_timeout(std::chrono::milliseconds timeout);
  std::chrono::milliseconds collective_timeout() const;

  void barrier();

  // Copies `root`'s value to every rank, replacing the other ranks' values
  // and their lengths.
  void broadcast(std::string& text, int root);
  // Copies `count_bytes` bytes from `root`'s buffer into every rank's buffer;
  // every rank must pass the same count.
  void broadcast_bytes(void* data, std::size_t count_bytes, int root);

  // Element-wise reductions over all ranks, in place. Every rank must pass the
  // same count. Float sums may differ in the last bits between runs with
  // different rank counts, because MPI chooses the summation order.
  void all_reduce_sum(double* values, std::size_t count);
  void all_reduce_sum(float* values, std::size_t count);
  void all_reduce_sum(std::int64_t* values, std::size_t count);
  void all_reduce_min(double* values, std::size_t count);
  void all_reduce_min(float* values, std::size_t count);
  void all_reduce_min(std::int64_t* values, std::size_t count);
  void all_reduce_max(double* values, std::size_t count);
  void all_reduce_max(float* values, std::size_t count);
  void all_reduce_max(std::int64_t* values, std::size_t count);

  // Every rank's string, indexed by rank.
  std::vector<std::string> all_gather(const std::string& text);

  // Starts an in-place sum all-reduce and returns at once (gradient buckets).
  AllReduceRequest iall_reduce_sum(float* values, std::size_t count);

  // Joins error consensus for `phase`: `local_error` is empty when this rank
  // succeeded. Throws DistributedError on every rank when any rank failed.
  // collective_try is the usual way to call it.
  void check_consensus(std::string_view phase, const std::string& local_error);

  // Logs `message` with this rank and ends every process of the job
  // (MPI_Abort). A one-rank group without MPI exits the process.
  [[noreturn]] void abort(const std::string& message, int exit_code = 1);

  // Internal state, defined in process_group.cpp.
  struct Impl;

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
};

// Ends every process of the job when MPI is running (MPI_Abort on
// MPI_COMM_WORLD) after logging `message`, and otherwise exits the process.
// Usable without a process group, for example from a std::terminate handler.
[[noreturn]] void abort_all(const std::string& message, int exit_code = 1);

// Runs `body` on every rank, then reaches error consensus: if `body` threw on
// any rank, every rank throws the same DistributedError naming `phase` and
// each failed rank's message ("dataset generation failed on rank 1: ...").
// Returns what `body` returns.
// NOTE: a rank that throws inside `body` skips the collectives that `body`
// would still have made, so the other ranks wait in those until the collective
// timeout aborts the job. Keep collectives out of `body`, or make sure every
// rank fails or succeeds before reaching them.
template <class Body>
auto collective_try(ProcessGroup& group, std::string_view phase, Body&& body) -> std::invoke_result_t<Body&> {
  using Result = std::invoke_result_t<Body&>;
  std::string error;
  std::optional<std::conditional_t<std::is_void_v<Result>, bool, Result>> result;

  try {
    if constexpr (std::is_void_v<Result>) {
      body();
      result = true;
    } else {
      result.emplace(body());
    }
  } catch (const std::exception& exception) {
    error = exception.what();
    if (error.empty()) error = "exception without a message";
  } catch (...) {
    error = "exception of a type not derived from std::exception";
  }

  group.check_consensus(phase, error);
  if constexpr (!std::is_void_v<Result>) return std::move(*result);
}

// Like collective_try, except that with one rank `body` runs directly and its
// exception propagates unchanged, so a single-process run keeps the error types
// (and the exit codes that depend on them).
template <class Body>
auto collective_try_typed(ProcessGroup& group, std::string_view phase, Body&& body) -> std::invoke_result_t<Body&> {
  if (group.size() == 1) return body();
  return collective_try(group, phase, body);
}

}  // namespace scaffold
