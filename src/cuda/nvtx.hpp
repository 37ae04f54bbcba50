// Scoped NVTX range, shown by Nsight Systems and Nsight Compute around the
// launches of one operation. Without NVTX3 headers (SCAFFOLD_HAVE_NVTX unset)
// it compiles to nothing.
#pragma once

#if SCAFFOLD_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

namespace scaffold::cuda {

class NvtxRange {
 public:
#if SCAFFOLD_HAVE_NVTX
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
#else
  explicit NvtxRange(const char* /*name*/) {}
#endif
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace scaffold::cuda
