// Fault injection for crash and I/O error tests of the real program.
//
// The environment variable SCAFFOLD_FAULT selects one named fault point and
// the call of it that fails, counted per process from 1:
//   SCAFFOLD_FAULT=instance_write:100         the 100th call kills the process with SIGKILL
//   SCAFFOLD_FAULT=npy_write:3:ENOSPC         the 3rd call makes the operation at that point
//                                             fail with errno ENOSPC (a name or a number)
// Other calls, and every call when the variable is unset or empty, do nothing.
//
// Fault points in data generation:
//   atomic_write    write_file_atomic, after half of the data is in the temporary file
//                   (with Sync::kDirect, half rounded down to a multiple of 4 KiB)
//   direct_open     write_file_atomic with Sync::kDirect, in place of the O_DIRECT open
//   direct_write    write_file_atomic with Sync::kDirect, in place of the first O_DIRECT write
//   atomic_rename   write_file_atomic, after fsync and close, before the rename
//   npy_write       every write_npy, at the atomic_write position
//   class_write     each class CSV of the class search, at the atomic_write position
//   instance_write  each instance .npy file, at the atomic_write position
//   volume_write    each volume .npy file of a dataset, at the atomic_write position
//   mask_write      each mask .npy file of a dataset, at the atomic_write position
//
// Fault points in training:
//   sample_read       each volume read by load_sample, before the read; an errno
//                     makes the read fail with IoError
//   train_step        after each training step (SIGKILL only)
//   checkpoint_write  each checkpoint file, at the atomic_write position
#pragma once

namespace scaffold {

// Counts a call of the fault point `name`. Returns 0, or the errno that the
// caller must report as the failure of the operation at this point. Kills the
// process with SIGKILL when SCAFFOLD_FAULT selects this call without an errno.
// Thread-safe. The first call reads SCAFFOLD_FAULT and throws
// std::invalid_argument when it is malformed; later calls only test a cached flag
// while the variable is unset.
int fault_point(const char* name);

// Reads SCAFFOLD_FAULT again and restarts the count, for a test process that
// sets the variable after fault_point has run (for example in a forked child).
// Must not run while another thread calls fault_point.
void reload_fault_plan();

}  // namespace scaffold
