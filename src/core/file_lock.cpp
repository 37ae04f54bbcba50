#include "core/file_lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <spdlog/spdlog.h>

#include "core/atomic_file.hpp"

namespace scaffold {
namespace {

// errno values from flock on a file system that does not implement it.
bool flock_unsupported(int errno_value) {
  return errno_value == ENOLCK || errno_value == EOPNOTSUPP || errno_value == ENOSYS;
}

int open_lock_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("open (lock file)", path, errno);
  return fd;
}

// flock, resuming after EINTR. Returns 0 or the errno.
int flock_retrying(int fd, int operation) {
  while (::flock(fd, operation) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

}  // namespace

FileLock::FileLock(const std::filesystem::path& path, const std::string& purpose) : path_(path), fd_(open_lock_file(path)) {
  int error = flock_retrying(fd_, LOCK_EX | LOCK_NB);
  if (error == EWOULDBLOCK) {
    spdlog::info("waiting for the lock {}: another process is {}", path.string(), purpose);
    error = flock_retrying(fd_, LOCK_EX);
    if (error == 0) spdlog::info("acquired the lock {}", path.string());
  }

  if (error == 0) {
    held_ = true;
    return;
  }
  if (flock_unsupported(error)) {
    spdlog::warn("the file system of {} does not support flock ({}), so nothing stops another process from {} at the "
                 "same time; run one scaffold process per fractal library and dataset directory",
                 path.string(), std::strerror(error), purpose);
    return;
  }
  ::close(fd_);
  fd_ = -1;
  throw IoError("flock", path, error);
}

std::optional<FileLock> FileLock::try_acquire(const std::filesystem::path& path) {
  FileLock lock;
  lock.path_ = path;
  lock.fd_ = open_lock_file(path);
  const int error = flock_retrying(lock.fd_, LOCK_EX | LOCK_NB);
  if (error == 0) {
    lock.held_ = true;
    return lock;
  }
  if (error == EWOULDBLOCK || flock_unsupported(error)) return std::nullopt;
  throw IoError("flock", path, error);
}

FileLock::~FileLock() {
  // Closing the last descriptor of the open file releases the lock.
  if (fd_ >= 0) ::close(fd_);
}

FileLock::FileLock(FileLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), held_(std::exchange(other.held_, false)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    held_ = std::exchange(other.held_, false);
  }
  return *this;
}

bool process_alive(long pid) {
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace scaffold
