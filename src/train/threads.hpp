// Thread-count policy shared by LibTorch, oneDNN and OpenMP.
#pragma once

namespace scaffold {

// Number of compute threads: OMP_NUM_THREADS when it is a positive integer,
// otherwise the number of cores this process may run on (sched_getaffinity).
// When that mask covers every core of the node and `processes_per_node` > 1,
// the launcher did not bind the processes, so they share the cores evenly
// (at least one thread each) instead of oversubscribing them.
int compute_thread_count(int processes_per_node = 1);

// Applies compute_thread_count() to LibTorch's intra-op pool and OpenMP, sets a
// single inter-op thread, and logs the result. Debian's LibTorch 1.13 otherwise
// starts with one intra-op thread on machines with several cores.
int configure_compute_threads(int processes_per_node = 1);

}  // namespace scaffold
