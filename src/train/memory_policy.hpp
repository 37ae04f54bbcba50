// Process-wide allocation policy for training.
#pragma once

namespace scaffold {

// Makes glibc's malloc keep freed memory for reuse instead of returning it
// to the kernel: no separate mmap per large block (M_MMAP_MAX = 0) and no
// trimming of the heap below 2 GiB of free space (M_TRIM_THRESHOLD).
//
// A training step allocates and frees the same activation-sized buffers,
// many larger than glibc's mmap threshold (32 MiB at most), every step. By
// default each of them is a fresh mmap whose pages fault in and are zeroed
// by the kernel on first touch, which cost 7-10% of a scale-5 step on a
// 2-core machine. With this policy the buffers come back from the heap warm.
// The price is that the resident size stays at its peak, which a benchmark
// process reaches on its first step anyway.
//
// Returns false, and changes nothing else, when glibc rejects a setting.
bool keep_freed_memory_for_reuse();

}  // namespace scaffold
