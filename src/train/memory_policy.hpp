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
//
// The resident size no longer shrinks between steps. NOTE: heap
// fragmentation can make it grow past the peak of a step: a synthetic loop
// that freed one 300 MB block around small allocations reached 2.4 GB
// instead of 0.3 GB. bench_step at scale 5 kept the same peak over 4 and 16
// steps. glibc 2.36 still maps requests of 64 MiB and more made in threads
// other than the main one.
//
// SCAFFOLD_KEEP_FREED_MEMORY=0 in the environment turns the policy off.
// Returns whether both settings are in effect. When glibc rejects one, the
// other may still be set, and a warning names them.
bool keep_freed_memory_for_reuse();

}  // namespace scaffold
