#include "train/memory_policy.hpp"

#include <malloc.h>

#include <climits>

#include "core/logging.hpp"

namespace scaffold {

bool keep_freed_memory_for_reuse() {
  // mallopt returns 1 on success and 0 on error.
  const bool no_mmap = mallopt(M_MMAP_MAX, 0) == 1;
  const bool no_trim = mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  if (no_mmap && no_trim) {
    spdlog::debug("malloc keeps freed memory for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD={})", INT_MAX);
    return true;
  }
  spdlog::warn("malloc rejected M_MMAP_MAX=0 or M_TRIM_THRESHOLD; large buffers are mapped afresh each step");
  return false;
}

}  // namespace scaffold
