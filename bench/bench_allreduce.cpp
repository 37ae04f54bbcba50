// All-reduce time and bandwidth against message size for the process group's
// sum: blocking with the default collective timeout (MPI_Iallreduce tested
// until done), blocking without a timeout (MPI_Allreduce), and non-blocking
// (iall_reduce_sum, then wait).
//
//   mpiexec -n 2 build/bench/bench_allreduce [max_bytes]
//
// Prints one row per size from rank 0. Bus bandwidth uses the convention of
// nccl-tests: bytes * 2 (n - 1) / n / time, the traffic per rank of a ring.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dist/process_group.hpp"

namespace {

using Clock = std::chrono::steady_clock;

enum class Method { kBounded, kUnbounded, kNonBlocking };

void all_reduce_once(scaffold::ProcessGroup& group, Method method, std::vector<float>& buffer) {
  switch (method) {
    case Method::kBounded:
      group.set_collective_timeout(scaffold::ProcessGroup::kDefaultCollectiveTimeout);
      group.all_reduce_sum(buffer.data(), buffer.size());
      break;
    case Method::kUnbounded:
      group.set_collective_timeout(std::chrono::milliseconds(0));
      group.all_reduce_sum(buffer.data(), buffer.size());
      break;
    case Method::kNonBlocking:
      group.set_collective_timeout(scaffold::ProcessGroup::kDefaultCollectiveTimeout);
      group.iall_reduce_sum(buffer.data(), buffer.size()).wait();
      break;
  }
}

// Seconds per all-reduce: the best of three timed loops, because the machine
// is shared and a single loop can be slowed by other work.
double seconds_per_call(scaffold::ProcessGroup& group, Method method, std::vector<float>& buffer, int iterations) {
  for (int i = 0; i < 2; ++i) all_reduce_once(group, method, buffer);

  double best = 1e30;
  for (int repeat = 0; repeat < 3; ++repeat) {
    group.barrier();
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < iterations; ++i) all_reduce_once(group, method, buffer);
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();

    // The slowest rank defines the time of a collective.
    group.all_reduce_max(&elapsed, 1);
    best = std::min(best, elapsed / iterations);
  }
  return best;
}

std::string format_bytes(std::size_t bytes) {
  if (bytes >= (std::size_t{1} << 20)) return fmt::format("{} MiB", bytes >> 20);
  return fmt::format("{} KiB", bytes >> 10);
}

}  // namespace

int main(int argc, char** argv) {
  auto group = scaffold::ProcessGroup::init(&argc, &argv);
  const std::size_t max_bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : std::size_t{64} << 20;

  if (group->is_root()) {
    fmt::print("all-reduce of float32 sums over {} ranks\n", group->size());
    fmt::print("{:>8} | {:>22} | {:>22} | {:>22}\n", "", "all_reduce_sum", "no timeout", "iall_reduce_sum+wait");
    fmt::print("{:>8} | {:>9} {:>12} | {:>9} {:>12} | {:>9} {:>12}\n", "size", "time_us", "busbw_GB/s", "time_us",
               "busbw_GB/s", "time_us", "busbw_GB/s");
  }

  const double bus_factor = group->size() > 1 ? 2.0 * (group->size() - 1) / group->size() : 1.0;
  for (std::size_t bytes = 1024; bytes <= max_bytes; bytes *= 4) {
    std::vector<float> buffer(bytes / sizeof(float), 1.0f);
    // About 256 MiB of traffic per timed loop, at least 5 and at most 2000 calls.
    const int iterations = static_cast<int>(std::clamp<std::size_t>((std::size_t{256} << 20) / bytes, 5, 2000));

    std::string row = fmt::format("{:>8}", format_bytes(bytes));
    for (const Method method : {Method::kBounded, Method::kUnbounded, Method::kNonBlocking}) {
      const double seconds = seconds_per_call(*group, method, buffer, iterations);
      row += fmt::format(" | {:>9.1f} {:>12.2f}", seconds * 1e6, bytes * bus_factor / seconds / 1e9);
    }
    if (group->is_root()) fmt::print("{}\n", row);
  }
  return 0;
}
