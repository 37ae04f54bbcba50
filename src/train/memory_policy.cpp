#include "train/memory_policy.hpp"

#include <malloc.h>

#include <climits>
#include <cstdlib>
#include <string_view>

#include "core/logging.hpp"

namespace scaffold {

bool keep_freed_memory_for_reuse() {
  if (const char* setting = std::getenv("SCAFFOLD_KEEP_FREED_MEMORY");
      setting != nullptr && std::string_view(setting) == "0") {
    spdlog::info("SCAFFOLD_KEEP_FREED_MEMORY=0: malloc maps and returns large blocks as glibc's defaults say");
    return false;
  }

  // mallopt returns 1 on success and 0 on error.
  const bool no_mmap = mallopt(M_MMAP_MAX, 0) == 1;
  const bool no_trim = mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  if (no_mmap && no_trim) {
    spdlog::debug("malloc keeps freed memory for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD={})", INT_MAX);
    return true;
  }
  const char* rejected = no_mmap ? "M_TRIM_THRESHOLD" : (no_trim ? "M_MMAP_MAX=0" : "M_MMAP_MAX=0 and M_TRIM_THRESHOLD");
  spdlog::warn("malloc rejected {}; large buffers may be mapped afresh each step", rejected);
  return false;
}

}  // namespace scaffold
