// Exclusive advisory locks (flock) on lock files, so that two processes never
// build the same fractal library or dataset at once.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace scaffold {

// An exclusive flock on a lock file, held until the object is destroyed. The
// lock file itself stays and is empty; only the lock matters. flock locks
// belong to the open file, so a process that locks the same path twice
// blocks itself.
class FileLock {
 public:
  // Opens or creates `path` and takes the lock, waiting as long as another
  // process holds it. `purpose` names the work that the lock protects, for the log line
  // written while waiting. When the file system does not support flock
  // (ENOLCK, EOPNOTSUPP or ENOSYS, as on some network file systems), logs a
  // warning and returns an object that holds no lock. Throws IoError when the
  // file cannot be opened or flock fails for another reason.
  FileLock(const std::filesystem::path& path, const std::string& purpose);

  // Takes the lock only if no other process holds it; returns nullopt otherwise
  // and when the file system does not support flock.
  static std::optional<FileLock> try_acquire(const std::filesystem::path& path);

  ~FileLock();
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Whether the lock is held: false only where the file system lacks flock.
  bool held() const { return held_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  FileLock() = default;

  std::filesystem::path path_;
  int fd_ = -1;
  bool held_ = false;
};

// Whether a process with this id exists on this host. A process of another
// user counts as alive.
bool process_alive(long pid);

}  // namespace scaffold
