#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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

void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  const std::filesystem::path temporary = temporary_path_for(path);

  const int fd = ::open(temporary.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("open", path, errno);

  // From here on every failure removes the temporary file before throwing.
  auto fail = [&](const char* what_failed, int errno_value, bool close_fd) {
    if (close_fd) ::close(fd);
    ::unlink(temporary.c_str());
    throw IoError(what_failed, path, errno_value);
  };

  if (const int write_errno = write_all(fd, bytes.data(), bytes.size()); write_errno != 0) {
    fail("write", write_errno, true);
  }
  if (::fsync(fd) != 0) fail("fsync", errno, true);
  if (::close(fd) != 0) fail("close", errno, false);
  if (::rename(temporary.c_str(), path.c_str()) != 0) fail("rename", errno, false);

  const std::filesystem::path directory = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  fsync_directory(directory);
}

void write_file_atomic(const std::filesystem::path& path, std::string_view text) {
  write_file_atomic(path, std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
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
