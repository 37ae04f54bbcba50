#include "train/threads.hpp"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <torch/torch.h>

#include "core/logging.hpp"

namespace scaffold {

int compute_thread_count(int processes_per_node) {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    try {
      std::size_t used = 0;
      const int value = std::stoi(env, &used);
      if (used == std::string(env).size() && value > 0) {
        return value;
      }
    } catch (const std::exception&) {
    }
    spdlog::warn("OMP_NUM_THREADS='{}' is not a positive integer; using the available cores", env);
  }

  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    const int count = CPU_COUNT(&mask);
    if (count > 0) {
      const auto node_cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
      if (processes_per_node > 1 && count >= node_cores) {
        return std::max(1, count / processes_per_node);
      }
      return count;
    }
  }
  return omp_get_num_procs();
}

int configure_compute_threads(int processes_per_node) {
  const int threads = compute_thread_count(processes_per_node);
  omp_set_num_threads(threads);
  torch::set_num_threads(threads);
  try {
    // Can only be set before the first inter-op parallel work starts.
    torch::set_num_interop_threads(1);
  } catch (const std::exception&) {
  }
  spdlog::info("compute threads: {} (LibTorch intra-op {}, OpenMP {})", threads, torch::get_num_threads(),
               omp_get_max_threads());
  return threads;
}

}  // namespace scaffold
