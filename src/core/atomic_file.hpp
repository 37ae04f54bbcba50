// Crash-safe file writes: data goes to a hidden temporary file in the target's
// directory, is flushed with fsync, then renamed over the final name, so a
// reader sees either the old file or the complete new one.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace scaffold {

// A failed system call on a path; the message names the call, the path and errno text.
class IoError : public std::runtime_error {
 public:
  IoError(const std::string& what_failed, const std::filesystem::path& path, int errno_value);
  int errno_value() const { return errno_value_; }

 private:
  int errno_value_;
};

// When a write reaches the disk: kNow fsyncs the file and its directory before
// returning. kDeferred leaves the data in the page cache, for files inside a
// staging directory that the caller publishes only after sync_filesystem, so
// that many files are flushed in one pass at the disk's sequential bandwidth.
// kDirect is kDeferred for large files: the data bypasses the page cache
// (O_DIRECT) and goes to the disk during the write, and only the metadata
// waits for sync_filesystem. Writeback through the page cache can run far
// below the disk's bandwidth (366 MB/s against 1.4 GB/s for 6 GiB on the
// development VM), so bulk data written once, such as dataset volumes, uses
// kDirect.
enum class Sync { kNow, kDeferred, kDirect };

// Address and size alignment that kDirect needs to bypass the page cache:
// one 4 KiB block, a multiple of the 512-byte and 4 KiB logical block sizes
// of common disks.
inline constexpr std::size_t kDirectIoAlignment = 4096;

// Writes `bytes` to `path` through its temporary name, then fsyncs the file and
// the directory (only with kNow). On failure the temporary file is removed and IoError is thrown,
// leaving any previous file at `path` unchanged.
// With kDirect, the whole blocks of `bytes` are written with O_DIRECT when
// bytes.data() is aligned to kDirectIoAlignment and the file system accepts
// O_DIRECT, and the last partial block through the page cache. Otherwise (an
// unaligned buffer, or EINVAL from open or the first write, as older tmpfs
// and some network file systems return) it writes as kDeferred does: the
// bytes on disk are the same either way.
// Fault points (core/fault_injection.hpp): "atomic_write", then each name in
// `write_faults`, after half of the data is written (with kDirect, half
// rounded down to a whole block); "atomic_rename" before the rename. An errno
// injected there fails that write or rename. With kDirect, "direct_open" and
// "direct_write" stand for the O_DIRECT open and first write: EINVAL there
// takes the fallback, another errno fails the write.
// NOTE: two threads of one process must not write the same path at once,
// because they would share the temporary name.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes,
                       std::span<const char* const> write_faults = {}, Sync sync = Sync::kNow);
void write_file_atomic(const std::filesystem::path& path, std::string_view text,
                       std::span<const char* const> write_faults = {});

// Flushes every written file of the filesystem that contains `path` to disk
// (syncfs). Throws IoError when `path` cannot be opened or the flush fails.
void sync_filesystem(const std::filesystem::path& path);

// Reads a whole file; throws IoError when it cannot be opened or read.
std::string read_file(const std::filesystem::path& path);

// Temporary name used for `path`: ".<name>.tmp<pid>" in the same directory.
std::filesystem::path temporary_path_for(const std::filesystem::path& path);

// The writer's process id in a temporary name made by temporary_path_for, or
// -1 when `file_name` is not such a name.
long temporary_file_owner(const std::string& file_name);

// Removes the temporary files in `directory` (not its subdirectories) whose
// writer is gone: its process id is not alive on this host, or it is this
// process, which writes no file while it calls this. Returns the number removed.
// Call it only while holding the lock that every writer of `directory` takes,
// because a live writer on another host has a process id that means nothing here.
int remove_orphaned_temporary_files(const std::filesystem::path& directory);

}  // namespace scaffold
