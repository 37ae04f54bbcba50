#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>

#include <spdlog/spdlog.h>

#include "core/fault_injection.hpp"
#include "core/file_lock.hpp"

namespace scaffold {

namespace {

std::string io_error_message(const std::string& what_failed, const std::filesystem::path& path, int errno_value) {
  return what_failed + " failed for " + path.string() + ": " + std::strerror(errno_value) + " (errno " +
         std::to_string(errno_value) + ")";
}

// Writes all bytes, resuming after partial writes and EINTR. Returns 0 or the errno of the failed write.
int write_all(int fd, const std::byte* bytes, std::size_t size) {
  std::size_t written = 0;
  while (written < size) {
    const ssize_t result = ::write(fd, bytes + written, size - written);
    if (result < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    written += static_cast<std::size_t>(result);
  }
  return 0;
}

// Flushes the directory so that a crash cannot lose the new directory entry made by rename.
void fsync_directory(const std::filesystem::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IoError("open (directory, for fsync)", directory, errno);

  int fsync_errno = 0;
  if (::fsync(fd) != 0) fsync_errno = errno;
  ::close(fd);

  // Some file systems do not support fsync on a directory and return EINVAL.
  // The rename itself has succeeded, so that is not an error.
  if (fsync_errno != 0 && fsync_errno != EINVAL) throw IoError("fsync (directory)", directory, fsync_errno);
}

}  // namespace

IoError::IoError(const std::string& what_failed, const std::filesystem::path& path, int errno_value)
    : std::runtime_error(io_error_message(what_failed, path, errno_value)), errno_value_(errno_value) {}

std::filesystem::path temporary_path_for(const std::filesystem::path& path) {
  std::string name = ".";
  name += path.filename().string();
  name += ".tmp";
  name += std::to_string(::getpid());
  return path.parent_path() / name;
}

void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes,
                       std::span<const char* const> write_faults, Sync sync) {
  const std::filesystem::path temporary = temporary_path_for(path);

  // Direct writes need an aligned buffer; the file offsets are aligned
  // because the direct part starts at 0 and is cut at block boundaries.
  bool direct = sync == Sync::kDirect && bytes.size() >= kDirectIoAlignment &&
                reinterpret_cast<std::uintptr_t>(bytes.data()) % kDirectIoAlignment == 0;
  constexpr int kFlags = O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC;
  int fd = -1;
  int open_errno = direct ? fault_point("direct_open") : 0;
  if (open_errno == 0) {
    fd = ::open(temporary.c_str(), kFlags | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0) open_errno = errno;
  }
  if (fd < 0 && direct && open_errno == EINVAL) {
    // The file system does not support O_DIRECT (tmpfs before Linux 6.6,
    // for one).
    direct = false;
    fd = ::open(temporary.c_str(), kFlags, 0644);
    if (fd < 0) open_errno = errno;
  }
  if (fd < 0) throw IoError("open", path, open_errno);

  // From here on every failure removes the temporary file before throwing.
  auto fail = [&](const char* what_failed, int errno_value, bool close_fd) {
    if (close_fd) ::close(fd);
    ::unlink(temporary.c_str());
    throw IoError(what_failed, path, errno_value);
  };

  // Leaves direct mode for the rest of the file. Returns 0 or errno.
  const auto stop_direct = [&]() -> int {
    if (!direct) return 0;
    direct = false;
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) != 0) return errno;
    return 0;
  };

  // Writes bytes [begin, end), in direct mode up to the last whole block.
  const auto write_range = [&](std::size_t begin, std::size_t end) {
    if (direct) {
      const std::size_t direct_end = std::max(begin, end / kDirectIoAlignment * kDirectIoAlignment);
      if (direct_end > begin) {
        int write_errno = begin == 0 ? fault_point("direct_write") : 0;
        if (write_errno == 0) write_errno = write_all(fd, bytes.data() + begin, direct_end - begin);
        if (write_errno == EINVAL && begin == 0) {
          // Some file systems accept O_DIRECT at open but not the write:
          // start over through the page cache.
          write_errno = stop_direct();
          if (write_errno == 0 && (::lseek(fd, 0, SEEK_SET) != 0 || ::ftruncate(fd, 0) != 0)) write_errno = errno;
          if (write_errno == 0) write_errno = write_all(fd, bytes.data(), end);
          if (write_errno != 0) fail("write", write_errno, true);
          return;
        }
        if (write_errno != 0) fail("write", write_errno, true);
        begin = direct_end;
      }
      if (begin == end) return;
      if (const int fcntl_errno = stop_direct(); fcntl_errno != 0) {
        fail("fcntl (clearing O_DIRECT)", fcntl_errno, true);
      }
    }
    if (const int write_errno = write_all(fd, bytes.data() + begin, end - begin); write_errno != 0) {
      fail("write", write_errno, true);
    }
  };

  // The data goes out in two halves with the write fault points between them,
  // so that a kill there leaves a partly written temporary file, as a crash
  // would. A direct write cuts at a block boundary.
  const std::size_t half =
      direct ? bytes.size() / 2 / kDirectIoAlignment * kDirectIoAlignment : bytes.size() / 2;
  write_range(0, half);
  int injected_errno = fault_point("atomic_write");
  for (const char* name : write_faults) {
    if (injected_errno == 0) injected_errno = fault_point(name);
  }
  if (injected_errno != 0) fail("write", injected_errno, true);
  write_range(half, bytes.size());

  if (sync == Sync::kNow && ::fsync(fd) != 0) fail("fsync", errno, true);
  if (::close(fd) != 0) fail("close", errno, false);
  if (const int rename_errno = fault_point("atomic_rename"); rename_errno != 0) fail("rename", rename_errno, false);
  if (::rename(temporary.c_str(), path.c_str()) != 0) fail("rename", errno, false);

  if (sync == Sync::kNow) {
    const std::filesystem::path directory = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
    fsync_directory(directory);
  }
}

void sync_filesystem(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError("open", path, errno);
  if (::syncfs(fd) != 0) {
    const int error = errno;
    ::close(fd);
    throw IoError("syncfs", path, error);
  }
  ::close(fd);
}

void write_file_atomic(const std::filesystem::path& path, std::string_view text,
                       std::span<const char* const> write_faults) {
  write_file_atomic(path, std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()),
                    write_faults);
}

long temporary_file_owner(const std::string& file_name) {
  // ".<name>.tmp<pid>": a leading dot, a non-empty name, then ".tmp" and digits.
  const std::size_t marker = file_name.rfind(".tmp");
  if (file_name.size() < 2 || file_name[0] != '.' || marker == std::string::npos || marker < 2) return -1;

  long pid = 0;
  const char* digits = file_name.data() + marker + 4;
  const char* end = file_name.data() + file_name.size();
  const auto [parsed_end, error] = std::from_chars(digits, end, pid);
  if (digits == end || error != std::errc() || parsed_end != end || pid <= 0) return -1;
  return pid;
}

int remove_orphaned_temporary_files(const std::filesystem::path& directory) {
  std::error_code error;
  std::filesystem::directory_iterator entries(directory, error);
  if (error) return 0;

  int removed = 0;
  for (const std::filesystem::directory_entry& entry : entries) {
    const long owner = temporary_file_owner(entry.path().filename().string());
    if (owner < 0 || !entry.is_regular_file(error)) continue;
    if (owner != static_cast<long>(::getpid()) && process_alive(owner)) continue;
    if (std::filesystem::remove(entry.path(), error)) {
      spdlog::info("removed {}, left by process {} that stopped while writing it", entry.path().string(), owner);
      ++removed;
    }
  }
  return removed;
}

std::string read_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError("open", path, errno);

  std::string contents;
  struct stat info {};
  if (::fstat(fd, &info) == 0 && info.st_size > 0) contents.reserve(static_cast<std::size_t>(info.st_size));

  char chunk[1 << 16];
  while (true) {
    const ssize_t result = ::read(fd, chunk, sizeof(chunk));
    if (result < 0) {
      if (errno == EINTR) continue;
      const int read_errno = errno;
      ::close(fd);
      throw IoError("read", path, read_errno);
    }
    if (result == 0) break;
    contents.append(chunk, static_cast<std::size_t>(result));
  }

  ::close(fd);
  return contents;
}

}  // namespace scaffold
