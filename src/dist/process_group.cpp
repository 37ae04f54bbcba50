#include "dist/process_group.hpp"

#if SCAFFOLD_HAVE_MPI
// Only the C API is used, so the deprecated C++ bindings that Open MPI and
// MPICH would otherwise include are skipped.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace scaffold {
namespace {

// MPI counts are int, so larger buffers go through several calls.
constexpr std::size_t kMaxElementsPerCall = std::size_t{1} << 30;

std::atomic<bool> init_called{false};

void check_root(int root, int size, const char* operation) {
  if (root < 0 || root >= size) {
    throw std::invalid_argument(fmt::format("{}: root rank {} is outside the group of {} ranks", operation, root, size));
  }
}

}  // namespace

#if SCAFFOLD_HAVE_MPI

struct ProcessGroup::Impl {
  bool owns_mpi = false;
  // Duplicates of MPI_COMM_WORLD that return errors instead of aborting. Error
  // consensus has its own communicator, so that a rank that failed early can
  // never be matched with another rank's collective inside the failed phase.
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm consensus_comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;

  // Throws MpiError naming `call`, this rank and MPI's error string.
  void check(int code, const char* call) const {
    if (code == MPI_SUCCESS) return;

    char text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
    int error_class = 0;
    MPI_Error_class(code, &error_class);
    throw MpiError(fmt::format("{} failed on rank {} of {}: {} (MPI error class {})", call, rank, size,
                               std::string(text, static_cast<std::size_t>(length)), error_class));
  }

  // Waits for `request` with MPI_Test, aborting the job after `timeout`. A
  // short wait spins for latency. A long one (a rank still computing before
  // the collective) yields, then sleeps 1 ms between tests to free the core.
  void wait(MPI_Request& request, const char* operation) const {
    if (timeout.count() <= 0) {
      check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait");
      return;
    }

    using Clock = std::chrono::steady_clock;
    const Clock::time_point start = Clock::now();
    while (true) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done != 0) return;

      const Clock::duration waited = Clock::now() - start;
      if (waited > timeout) {
        abort_all(fmt::format("{} did not complete within {:g} s on rank {} of {}; another rank has probably failed "
                              "outside a collective or stopped responding",
                              operation, std::chrono::duration<double>(timeout).count(), rank, size));
      }
      if (waited < std::chrono::milliseconds(10)) continue;
      if (waited < std::chrono::seconds(1)) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }
};

struct AllReduceRequest::State {
  const ProcessGroup::Impl* impl = nullptr;
  MPI_Request request = MPI_REQUEST_NULL;
};

namespace {

template <class T>
MPI_Datatype mpi_datatype();
template <>
MPI_Datatype mpi_datatype<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_datatype<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_datatype<std::int64_t>() {
  return MPI_INT64_T;
}

// Without a timeout the blocking MPI_Allreduce runs, because Open MPI 4.1's
// default algorithms for it are faster than those for MPI_Iallreduce on large
// buffers (bench_allreduce).
template <class T>
void all_reduce(const ProcessGroup::Impl& impl, T* values, std::size_t count, MPI_Op op, const char* operation) {
  for (std::size_t offset = 0; offset < count; offset += kMaxElementsPerCall) {
    const int chunk = static_cast<int>(std::min(kMaxElementsPerCall, count - offset));
    if (impl.timeout.count() <= 0) {
      impl.check(MPI_Allreduce(MPI_IN_PLACE, values + offset, chunk, mpi_datatype<T>(), op, impl.comm),
                 "MPI_Allreduce");
      continue;
    }

    MPI_Request request = MPI_REQUEST_NULL;
    impl.check(MPI_Iallreduce(MPI_IN_PLACE, values + offset, chunk, mpi_datatype<T>(), op, impl.comm, &request),
               "MPI_Iallreduce");
    impl.wait(request, operation);
  }
}

// Every rank's string on `comm`, indexed by rank: lengths first, then the bytes.
std::vector<std::string> gather_strings(const ProcessGroup::Impl& impl, MPI_Comm comm, const std::string& text,
                                        const char* operation) {
  const auto size = static_cast<std::size_t>(impl.size);
  std::int64_t length = static_cast<std::int64_t>(text.size());
  std::vector<std::int64_t> lengths(size);
  MPI_Request request = MPI_REQUEST_NULL;
  impl.check(MPI_Iallgather(&length, 1, MPI_INT64_T, lengths.data(), 1, MPI_INT64_T, comm, &request),
             "MPI_Iallgather");
  impl.wait(request, operation);

  // Every rank sees the same lengths, so every rank raises this error together.
  std::int64_t total = 0;
  for (const std::int64_t each : lengths) total += each;
  if (total > INT_MAX) {
    throw std::length_error(fmt::format("{}: the strings of all ranks add up to {} bytes, more than the {} bytes "
                                        "one MPI_Allgatherv can carry",
                                        operation, total, INT_MAX));
  }

  std::vector<int> counts(size);
  std::vector<int> displacements(size);
  int offset = 0;
  for (std::size_t r = 0; r < size; ++r) {
    counts[r] = static_cast<int>(lengths[r]);
    displacements[r] = offset;
    offset += counts[r];
  }
  std::string gathered(static_cast<std::size_t>(total), '\0');
  impl.check(MPI_Iallgatherv(text.data(), static_cast<int>(length), MPI_CHAR, gathered.data(), counts.data(),
                             displacements.data(), MPI_CHAR, comm, &request),
             "MPI_Iallgatherv");
  impl.wait(request, operation);

  std::vector<std::string> strings(size);
  for (std::size_t r = 0; r < size; ++r) strings[r] = gathered.substr(displacements[r], counts[r]);
  return strings;
}

// Turns an exception that escapes main on one rank into an abort of the whole
// job, because some launchers (srun without --kill-on-bad-exit) would leave
// the other ranks waiting in a collective.
void abort_on_terminate() {
  std::string message = "std::terminate was called without an active exception";
  if (const std::exception_ptr current = std::current_exception()) {
    try {
      std::rethrow_exception(current);
    } catch (const std::exception& exception) {
      message = fmt::format("uncaught exception: {}", exception.what());
    } catch (...) {
      message = "uncaught exception of a type not derived from std::exception";
    }
  }
  abort_all(message, 1);
}

}  // namespace

#else  // SCAFFOLD_HAVE_MPI

struct ProcessGroup::Impl {
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
};

struct AllReduceRequest::State {};

#endif  // SCAFFOLD_HAVE_MPI

AllReduceRequest::AllReduceRequest() = default;
AllReduceRequest::AllReduceRequest(std::unique_ptr<State> state) : state_(std::move(state)) {}
AllReduceRequest::AllReduceRequest(AllReduceRequest&& other) noexcept = default;

AllReduceRequest& AllReduceRequest::operator=(AllReduceRequest&& other) noexcept {
  if (this != &other) {
    // A pending request owns a buffer in use by MPI, so it completes before it is replaced.
    try {
      wait();
    } catch (const std::exception& exception) {
      spdlog::error("non-blocking all-reduce failed while its request was replaced: {}", exception.what());
    }
    state_ = std::move(other.state_);
  }
  return *this;
}

AllReduceRequest::~AllReduceRequest() {
  try {
    wait();
  } catch (const std::exception& exception) {
    spdlog::error("non-blocking all-reduce failed while its request was destroyed: {}", exception.what());
  }
}

bool AllReduceRequest::pending() const {
#if SCAFFOLD_HAVE_MPI
  return state_ != nullptr && state_->request != MPI_REQUEST_NULL;
#else
  return false;
#endif
}

bool AllReduceRequest::test() {
  if (!pending()) return true;

#if SCAFFOLD_HAVE_MPI
  int done = 0;
  state_->impl->check(MPI_Test(&state_->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
  return done != 0;
#else
  return true;
#endif
}

void AllReduceRequest::wait() {
  if (!pending()) return;

#if SCAFFOLD_HAVE_MPI
  state_->impl->wait(state_->request, "iall_reduce_sum (MPI_Iallreduce)");
#endif
}

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

bool ProcessGroup::built_with_mpi() {
#if SCAFFOLD_HAVE_MPI
  return true;
#else
  return false;
#endif
}

std::unique_ptr<ProcessGroup> ProcessGroup::create_local() {
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(std::make_unique<Impl>()));
}

std::unique_ptr<ProcessGroup> ProcessGroup::init(int* argc, char*** argv, const EnvGetter& get_env) {
  if (init_called.exchange(true)) {
    throw std::logic_error(
        "ProcessGroup::init was called twice; MPI can be initialized only once per process, so create the process "
        "group once in main and pass it on");
  }
  const LaunchInfo launch = discover_launch(get_env);
  auto impl = std::make_unique<Impl>();

#if SCAFFOLD_HAVE_MPI
  // 1. Start MPI unless the host program already did.
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = MPI_THREAD_SINGLE;
  if (initialized == 0) {
    const int code = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (code != MPI_SUCCESS) {
      throw MpiError(fmt::format("MPI_Init_thread failed with error code {}; check that the MPI runtime is installed "
                                 "and that the job was started by its launcher (mpiexec, srun, flux run)",
                                 code));
    }
    impl->owns_mpi = true;
  } else {
    MPI_Query_thread(&provided);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &impl->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &impl->size);

  // 2. A launcher that disagrees with MPI ends the job before anything else runs.
  try {
    check_launch_matches(launch, impl->rank, impl->size, true);
  } catch (const LaunchError& error) {
    abort_all(error.what(), 1);
  }

  // 3. Private communicators whose errors come back as return codes.
  impl->check(MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm), "MPI_Comm_dup");
  impl->check(MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  impl->check(MPI_Comm_dup(MPI_COMM_WORLD, &impl->consensus_comm), "MPI_Comm_dup");
  impl->check(MPI_Comm_set_errhandler(impl->consensus_comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");

  // 4. Node-local rank: the launcher's value wins, MPI's shared-memory split is
  // the fallback. Every rank makes the split, because it is a collective.
  MPI_Comm node_comm = MPI_COMM_NULL;
  impl->check(MPI_Comm_split_type(impl->comm, MPI_COMM_TYPE_SHARED, impl->rank, MPI_INFO_NULL, &node_comm),
              "MPI_Comm_split_type");
  int node_rank = 0;
  int node_size = 1;
  MPI_Comm_rank(node_comm, &node_rank);
  MPI_Comm_size(node_comm, &node_size);
  MPI_Comm_free(&node_comm);

  if (provided < MPI_THREAD_FUNNELED) {
    spdlog::warn("MPI provides thread level {} (below MPI_THREAD_FUNNELED); collectives still run on the main thread "
                 "only, but OpenMP regions next to MPI calls are outside what this MPI promises",
                 provided);
  }
  if (impl->size > 1) std::set_terminate(abort_on_terminate);

  auto group = std::unique_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
  group->rank_ = group->impl_->rank;
  group->size_ = group->impl_->size;
  group->local_rank_ = launch.local_rank.value_or(node_rank);
  group->local_size_ = launch.local_size.value_or(node_size);
#else
  (void)argc;
  (void)argv;
  check_launch_matches(launch, 0, 1, false);
  auto group = std::unique_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
#endif

  spdlog::debug("process group: rank {} of {}, local rank {} of {}, launcher variables: rank {}, size {}",
                group->rank_, group->size_, group->local_rank_, group->local_size_,
                launch.rank_source.empty() ? "unset" : launch.rank_source,
                launch.size_source.empty() ? "unset" : launch.size_source);
  return group;
}

ProcessGroup::~ProcessGroup() {
#if SCAFFOLD_HAVE_MPI
  if (impl_->comm == MPI_COMM_NULL) return;

  if (std::uncaught_exceptions() > 0 && size_ > 1) {
    abort("the process group was destroyed while an exception propagated; ending the job so that no rank waits in "
          "a collective this rank will not join");
  }

  MPI_Comm_free(&impl_->consensus_comm);
  MPI_Comm_free(&impl_->comm);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (impl_->owns_mpi && finalized == 0) MPI_Finalize();
#endif
}

void ProcessGroup::set_collective_timeout(std::chrono::milliseconds timeout) { impl_->timeout = timeout; }

std::chrono::milliseconds ProcessGroup::collective_timeout() const { return impl_->timeout; }

void ProcessGroup::abort(const std::string& message, int exit_code) { abort_all(message, exit_code); }

void abort_all(const std::string& message, int exit_code) {
  int rank = 0;
#if SCAFFOLD_HAVE_MPI
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi_running = initialized != 0 && finalized == 0;
  if (mpi_running) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
#endif

  spdlog::critical("rank {} ends the job: {}", rank, message);
  spdlog::default_logger()->flush();
  std::fflush(nullptr);

#if SCAFFOLD_HAVE_MPI
  if (mpi_running) MPI_Abort(MPI_COMM_WORLD, exit_code);
#endif
  std::_Exit(exit_code);
}

#if SCAFFOLD_HAVE_MPI

void ProcessGroup::barrier() {
  if (size_ == 1) return;

  MPI_Request request = MPI_REQUEST_NULL;
  impl_->check(MPI_Ibarrier(impl_->comm, &request), "MPI_Ibarrier");
  impl_->wait(request, "barrier (MPI_Ibarrier)");
}

void ProcessGroup::broadcast_bytes(void* data, std::size_t count_bytes, int root) {
  check_root(root, size_, "broadcast_bytes");
  if (size_ == 1) return;

  auto* bytes = static_cast<char*>(data);
  for (std::size_t offset = 0; offset < count_bytes; offset += kMaxElementsPerCall) {
    const int chunk = static_cast<int>(std::min(kMaxElementsPerCall, count_bytes - offset));
    if (impl_->timeout.count() <= 0) {
      impl_->check(MPI_Bcast(bytes + offset, chunk, MPI_BYTE, root, impl_->comm), "MPI_Bcast");
      continue;
    }

    MPI_Request request = MPI_REQUEST_NULL;
    impl_->check(MPI_Ibcast(bytes + offset, chunk, MPI_BYTE, root, impl_->comm, &request), "MPI_Ibcast");
    impl_->wait(request, "broadcast (MPI_Ibcast)");
  }
}

void ProcessGroup::broadcast(std::string& text, int root) {
  check_root(root, size_, "broadcast");
  if (size_ == 1) return;

  std::uint64_t length = rank_ == root ? text.size() : 0;
  broadcast_bytes(&length, sizeof(length), root);
  if (rank_ != root) text.assign(length, '\0');
  broadcast_bytes(text.data(), length, root);
}

void ProcessGroup::all_reduce_sum(double* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_SUM, "all_reduce_sum (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_sum(float* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_SUM, "all_reduce_sum (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_sum(std::int64_t* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_SUM, "all_reduce_sum (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_min(double* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_MIN, "all_reduce_min (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_min(float* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_MIN, "all_reduce_min (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_min(std::int64_t* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_MIN, "all_reduce_min (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_max(double* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_MAX, "all_reduce_max (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_max(float* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_MAX, "all_reduce_max (MPI_Iallreduce)");
}
void ProcessGroup::all_reduce_max(std::int64_t* values, std::size_t count) {
  if (size_ > 1) all_reduce(*impl_, values, count, MPI_MAX, "all_reduce_max (MPI_Iallreduce)");
}

std::vector<std::string> ProcessGroup::all_gather(const std::string& text) {
  if (size_ == 1) return {text};
  return gather_strings(*impl_, impl_->comm, text, "all_gather (MPI_Iallgatherv)");
}

AllReduceRequest ProcessGroup::iall_reduce_sum(float* values, std::size_t count) {
  if (size_ == 1 || count == 0) return AllReduceRequest();
  if (count > static_cast<std::size_t>(INT_MAX)) {
    throw std::invalid_argument(fmt::format(
        "iall_reduce_sum: {} elements exceed the {} one MPI_Iallreduce can carry; split the bucket", count, INT_MAX));
  }

  auto state = std::make_unique<AllReduceRequest::State>();
  state->impl = impl_.get();
  impl_->check(MPI_Iallreduce(MPI_IN_PLACE, values, static_cast<int>(count), MPI_FLOAT, MPI_SUM, impl_->comm,
                              &state->request),
               "MPI_Iallreduce");
  return AllReduceRequest(std::move(state));
}

void ProcessGroup::check_consensus(std::string_view phase, const std::string& local_error) {
  if (!local_error.empty()) spdlog::error("{} failed on rank {}: {}", phase, rank_, local_error);
  if (size_ == 1) {
    if (!local_error.empty()) throw DistributedError(std::string(phase), {{rank_, local_error}}, size_);
    return;
  }

  // Every rank learns whether any rank failed, and only then are messages gathered.
  int all_ok = local_error.empty() ? 1 : 0;
  MPI_Request request = MPI_REQUEST_NULL;
  impl_->check(MPI_Iallreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, impl_->consensus_comm, &request),
               "MPI_Iallreduce");
  impl_->wait(request, "error consensus (MPI_Iallreduce)");
  if (all_ok == 1) return;

  const std::vector<std::string> messages =
      gather_strings(*impl_, impl_->consensus_comm, local_error, "error consensus (MPI_Iallgatherv)");
  std::vector<RankFailure> failures;
  for (int r = 0; r < size_; ++r) {
    if (!messages[static_cast<std::size_t>(r)].empty()) failures.push_back({r, messages[static_cast<std::size_t>(r)]});
  }
  throw DistributedError(std::string(phase), std::move(failures), size_);
}

#else  // SCAFFOLD_HAVE_MPI: one rank, so every collective leaves the data as it is.

void ProcessGroup::barrier() {}
void ProcessGroup::broadcast_bytes(void*, std::size_t, int root) { check_root(root, size_, "broadcast_bytes"); }
void ProcessGroup::broadcast(std::string&, int root) { check_root(root, size_, "broadcast"); }
void ProcessGroup::all_reduce_sum(double*, std::size_t) {}
void ProcessGroup::all_reduce_sum(float*, std::size_t) {}
void ProcessGroup::all_reduce_sum(std::int64_t*, std::size_t) {}
void ProcessGroup::all_reduce_min(double*, std::size_t) {}
void ProcessGroup::all_reduce_min(float*, std::size_t) {}
void ProcessGroup::all_reduce_min(std::int64_t*, std::size_t) {}
void ProcessGroup::all_reduce_max(double*, std::size_t) {}
void ProcessGroup::all_reduce_max(float*, std::size_t) {}
void ProcessGroup::all_reduce_max(std::int64_t*, std::size_t) {}
std::vector<std::string> ProcessGroup::all_gather(const std::string& text) { return {text}; }
AllReduceRequest ProcessGroup::iall_reduce_sum(float*, std::size_t) { return AllReduceRequest(); }

void ProcessGroup::check_consensus(std::string_view phase, const std::string& local_error) {
  if (local_error.empty()) return;

  spdlog::error("{} failed on rank {}: {}", phase, rank_, local_error);
  throw DistributedError(std::string(phase), {{rank_, local_error}}, size_);
}

#endif  // SCAFFOLD_HAVE_MPI

}  // namespace scaffold
