// The ranks of a job as data generation uses them: rank, size, a sum and a
// broadcast. The command line fills it from the process group, so generation
// code does not depend on MPI. The default value is a single process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace scaffold {

struct RankShare {
  int rank = 0;
  int size = 1;
  // Sums `count` values element-wise over all ranks, in place. Unused with one rank.
  std::function<void(std::int64_t* values, std::size_t count)> sum;
  // Replaces every rank's text with rank 0's. Unused with one rank.
  std::function<void(std::string& text)> broadcast;

  bool is_root() const { return rank == 0; }

  // Whether this rank handles work item `item` (items are dealt out in turn).
  bool owns(std::int64_t item) const { return item % size == rank; }

  void sum_in_place(std::int64_t* values, std::size_t count) const {
    if (size > 1) sum(values, count);
  }

  // Returns once every rank has called it.
  void barrier() const {
    std::int64_t token = 0;
    sum_in_place(&token, 1);
  }

  void broadcast_from_root(std::string& text) const {
    if (size > 1) broadcast(text);
  }
};

}  // namespace scaffold
