// Tests for write_file_atomic and read_file on real files in a fresh temporary
// directory: round trips, replacement, and failures that must leave nothing behind.
#include "core/atomic_file.hpp"
#include "core/fault_injection.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace scaffold {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "scaffold-atomic-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp failed for " << pattern;
    directory_ = pattern;
  }

  void TearDown() override {
    // A test may leave a directory read-only, so write access is restored before removal.
    std::error_code error;
    for (const auto& entry : fs::recursive_directory_iterator(directory_, error)) {
      if (entry.is_directory()) fs::permissions(entry.path(), fs::perms::owner_all, fs::perm_options::add, error);
    }
    fs::permissions(directory_, fs::perms::owner_all, fs::perm_options::add, error);
    fs::remove_all(directory_, error);
  }

  std::vector<std::string> entries_in(const fs::path& directory) const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path directory_;
};

TEST(IoErrorMessage, NamesCallPathAndErrno) {
  const IoError error("write", "/x/y.npy", ENOSPC);
  EXPECT_STREQ(error.what(), "write failed for /x/y.npy: No space left on device (errno 28)");
  EXPECT_EQ(error.errno_value(), ENOSPC);
}

TEST(TemporaryPath, HiddenNameInSameDirectory) {
  const std::string suffix = ".tmp" + std::to_string(::getpid());
  EXPECT_EQ(temporary_path_for("/data/run/volume.npy"), fs::path("/data/run/.volume.npy" + suffix));
  EXPECT_EQ(temporary_path_for("volume.npy"), fs::path(".volume.npy" + suffix));
}

TEST_F(AtomicFileTest, TextRoundTrip) {
  const fs::path path = directory_ / "config.yml";
  write_file_atomic(path, std::string_view("seed: 42\nepochs: 3\n"));

  EXPECT_EQ(read_file(path), "seed: 42\nepochs: 3\n");
  EXPECT_EQ(entries_in(directory_), std::vector<std::string>{"config.yml"});
}

TEST_F(AtomicFileTest, DeferredSyncWritesSameBytes) {
  const fs::path path = directory_ / "volume.bin";
  const std::string text(100000, 'v');
  const std::array<const char*, 0> no_faults{};
  write_file_atomic(path, std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()),
                    no_faults, Sync::kDeferred);
  sync_filesystem(directory_);

  EXPECT_EQ(read_file(path), text);
  EXPECT_EQ(entries_in(directory_), std::vector<std::string>{"volume.bin"});
}

// An aligned buffer of `size` bytes with a byte pattern that repeats only
// every 251 bytes, so a block written at the wrong offset shows.
struct AlignedBytes {
  explicit AlignedBytes(std::size_t size, std::size_t offset = 0)
      : storage(static_cast<std::byte*>(std::aligned_alloc(kDirectIoAlignment, size + kDirectIoAlignment))),
        bytes(storage.get() + offset, size) {
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>(i % 251);
  }
  std::string text() const { return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()); }

  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> storage;
  std::span<std::byte> bytes;
};

bool on_tmpfs(const fs::path& directory) {
  struct statfs file_system {};
  return ::statfs(directory.c_str(), &file_system) == 0 && file_system.f_type == TMPFS_MAGIC;
}

// Pages of `path` that are in the page cache, from mincore over a mapping.
std::size_t resident_pages(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  const auto size = static_cast<std::size_t>(fs::file_size(path));
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) return 0;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> residency((size + page - 1) / page);
  const bool ok = ::mincore(mapping, size, residency.data()) == 0;
  ::munmap(mapping, size);
  if (!ok) return 0;
  return static_cast<std::size_t>(
      std::count_if(residency.begin(), residency.end(), [](unsigned char r) { return (r & 1) != 0; }));
}

TEST_F(AtomicFileTest, DirectWritesSameBytes) {
  // Sizes around the block: below one block (written through the page
  // cache), exact blocks, and blocks with a tail, where the halves cut at a
  // block boundary.
  const std::array<const char*, 0> no_faults{};
  for (const std::size_t size : {std::size_t{100}, std::size_t{4096}, std::size_t{5000}, std::size_t{3 * 4096 + 128},
                                 std::size_t{10 * 4096}, std::size_t{1 << 20}}) {
    const AlignedBytes data(size);
    const fs::path path = directory_ / ("direct" + std::to_string(size) + ".bin");
    write_file_atomic(path, data.bytes, no_faults, Sync::kDirect);
    EXPECT_EQ(read_file(path), data.text()) << size << " bytes";
  }
  sync_filesystem(directory_);
  EXPECT_EQ(entries_in(directory_).size(), 6u);
}

TEST_F(AtomicFileTest, DirectWriteBypassesPageCache) {
  // 1 MiB + 128 bytes: 256 whole blocks go to the disk directly and only the
  // page with the 128-byte tail passes through the page cache. tmpfs keeps
  // every page in memory, with or without O_DIRECT.
  if (on_tmpfs(directory_)) GTEST_SKIP() << directory_ << " is on tmpfs, which has no disk to bypass to";

  const std::array<const char*, 0> no_faults{};
  const AlignedBytes data((1 << 20) + 128);
  const fs::path direct = directory_ / "direct.bin";
  write_file_atomic(direct, data.bytes, no_faults, Sync::kDirect);
  EXPECT_LE(resident_pages(direct), 1u);

  // The same bytes from an unaligned address take the page cache, as
  // kDeferred does, and still arrive intact.
  const AlignedBytes unaligned((1 << 20) + 128, 1);
  const fs::path buffered = directory_ / "buffered.bin";
  write_file_atomic(buffered, unaligned.bytes, no_faults, Sync::kDirect);
  EXPECT_GT(resident_pages(buffered), 1u);
  EXPECT_EQ(read_file(direct), data.text());
  EXPECT_EQ(read_file(buffered), unaligned.text());
}

TEST_F(AtomicFileTest, DirectWriteOnTmpfsKeepsBytes) {
  // tmpfs rejects O_DIRECT at open before Linux 6.6 and accepts it since;
  // either way the file contains the same bytes.
  if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  std::string pattern = "/dev/shm/scaffold-direct-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
  const fs::path path = fs::path(pattern) / "volume.bin";
  const std::array<const char*, 0> no_faults{};
  const AlignedBytes data(3 * 4096 + 128);
  write_file_atomic(path, data.bytes, no_faults, Sync::kDirect);
  const std::string contents = read_file(path);
  fs::remove_all(pattern);
  EXPECT_EQ(contents, data.text());
}

// Writes with SCAFFOLD_FAULT set to `plan` and returns the IoError's errno,
// or 0 when the write succeeds.
int direct_write_with_fault(const fs::path& path, const char* plan, std::span<const std::byte> bytes) {
  ::setenv("SCAFFOLD_FAULT", plan, 1);
  reload_fault_plan();
  const std::array<const char*, 0> no_faults{};
  int errno_value = 0;
  try {
    write_file_atomic(path, bytes, no_faults, Sync::kDirect);
  } catch (const IoError& error) {
    errno_value = error.errno_value();
  }
  ::unsetenv("SCAFFOLD_FAULT");
  reload_fault_plan();
  return errno_value;
}

TEST_F(AtomicFileTest, DirectWriteFallsBackOnEinval) {
  // EINVAL from the O_DIRECT open or from the first O_DIRECT write, as file
  // systems without O_DIRECT return it, makes the write go through the page
  // cache with the same bytes.
  const AlignedBytes data(5 * 4096 + 300);
  for (const char* plan : {"direct_open:1:EINVAL", "direct_write:1:EINVAL"}) {
    const fs::path path = directory_ / (std::string(plan).substr(0, 12) + ".bin");
    EXPECT_EQ(direct_write_with_fault(path, plan, data.bytes), 0) << plan;
    EXPECT_EQ(read_file(path), data.text()) << plan;
    if (!on_tmpfs(directory_)) EXPECT_GT(resident_pages(path), 1u) << plan << ": the data skipped the page cache";
  }
}

TEST_F(AtomicFileTest, DirectWriteFailsOnOtherErrors) {
  // Any other errno from the O_DIRECT open or write fails the write and
  // leaves no file.
  const AlignedBytes data(5 * 4096 + 300);
  EXPECT_EQ(direct_write_with_fault(directory_ / "a.bin", "direct_open:1:EACCES", data.bytes), EACCES);
  EXPECT_EQ(direct_write_with_fault(directory_ / "b.bin", "direct_write:1:ENOSPC", data.bytes), ENOSPC);
  EXPECT_TRUE(entries_in(directory_).empty());
}

TEST_F(AtomicFileTest, DirectWriteFaultLeavesNoFile) {
  // An errno injected between the halves fails the write and removes the
  // temporary file, in direct mode as in the others.
  const fs::path path = directory_ / "volume.npy";
  ::setenv("SCAFFOLD_FAULT", "atomic_write:1:EIO", 1);
  reload_fault_plan();
  const std::array<const char*, 0> no_faults{};
  const AlignedBytes data(8 * 4096 + 128);
  try {
    write_file_atomic(path, data.bytes, no_faults, Sync::kDirect);
    ADD_FAILURE() << "the injected EIO did not fail the write";
  } catch (const IoError& error) {
    EXPECT_EQ(error.errno_value(), EIO);
  }
  ::unsetenv("SCAFFOLD_FAULT");
  reload_fault_plan();
  EXPECT_TRUE(entries_in(directory_).empty());
}

TEST_F(AtomicFileTest, SyncFilesystemNamesMissingPath) {
  try {
    sync_filesystem(directory_ / "missing");
    FAIL() << "sync_filesystem accepted a missing path";
  } catch (const IoError& error) {
    EXPECT_NE(std::string(error.what()).find("missing"), std::string::npos) << error.what();
    EXPECT_EQ(error.errno_value(), ENOENT);
  }
}

TEST_F(AtomicFileTest, BinaryRoundTrip) {
  // Every byte value, including NUL, repeated past one 64 KiB read chunk.
  std::vector<std::byte> bytes(200000);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>((i * 7 + i / 256) % 256);
  const fs::path path = directory_ / "blob.bin";
  write_file_atomic(path, std::span<const std::byte>(bytes));

  const std::string contents = read_file(path);
  ASSERT_EQ(contents.size(), bytes.size());
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    ASSERT_EQ(static_cast<unsigned char>(contents[i]), static_cast<unsigned char>(bytes[i])) << "byte " << i;
  }
}

TEST_F(AtomicFileTest, EmptyFile) {
  const fs::path path = directory_ / "empty";
  write_file_atomic(path, std::string_view());

  EXPECT_TRUE(fs::is_regular_file(path));
  EXPECT_EQ(fs::file_size(path), 0u);
  EXPECT_EQ(read_file(path), "");
}

TEST_F(AtomicFileTest, FileModeIs0644UnderUmask) {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  const fs::path path = directory_ / "mode";
  write_file_atomic(path, std::string_view("x"));

  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u & ~mask);
}

TEST_F(AtomicFileTest, OverwriteReplacesContents) {
  const fs::path path = directory_ / "result.json";
  write_file_atomic(path, std::string_view("a much longer first version of the file\n"));
  write_file_atomic(path, std::string_view("v2\n"));

  EXPECT_EQ(read_file(path), "v2\n");
  EXPECT_EQ(entries_in(directory_), std::vector<std::string>{"result.json"});
}

TEST_F(AtomicFileTest, OverwriteReplacesInode) {
  // rename() installs a new inode, so a reader that has the old file open keeps the old data.
  const fs::path path = directory_ / "data";
  write_file_atomic(path, std::string_view("old"));
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);

  write_file_atomic(path, std::string_view("new"));
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_NE(before.st_ino, after.st_ino);
}

TEST_F(AtomicFileTest, RelativePathInCurrentDirectory) {
  const fs::path previous = fs::current_path();
  fs::current_path(directory_);
  write_file_atomic("relative.txt", std::string_view("here"));
  fs::current_path(previous);

  EXPECT_EQ(read_file(directory_ / "relative.txt"), "here");
  EXPECT_EQ(entries_in(directory_), std::vector<std::string>{"relative.txt"});
}

TEST_F(AtomicFileTest, MissingDirectoryThrows) {
  const fs::path path = directory_ / "no-such-dir" / "volume.npy";
  try {
    write_file_atomic(path, std::string_view("data"));
    FAIL() << "expected IoError for " << path;
  } catch (const IoError& error) {
    EXPECT_EQ(error.errno_value(), ENOENT);
    EXPECT_NE(std::string(error.what()).find("open failed for " + path.string()), std::string::npos)
        << error.what();
    EXPECT_NE(std::string(error.what()).find("No such file or directory"), std::string::npos) << error.what();
  }
  EXPECT_TRUE(entries_in(directory_).empty());
}

TEST_F(AtomicFileTest, ReadOnlyDirectoryThrows) {
  // Permissions do not stop root, so the write runs in a child process that,
  // when started as root, first drops to the unprivileged uid and gid 65534.
  const fs::path locked = directory_ / "locked";
  fs::create_directory(locked);
  ASSERT_EQ(::chmod(directory_.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(locked.c_str(), 0555), 0);
  const fs::path path = locked / "volume.npy";

  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);

    int outcome = 0;
    try {
      write_file_atomic(path, std::string_view("data"));
      outcome = 1;
    } catch (const IoError& error) {
      const std::string expected = "open failed for " + path.string() + ": Permission denied (errno 13)";
      if (error.errno_value() != EACCES) outcome = 2;
      else if (error.what() != expected) outcome = 3;
    } catch (...) {
      outcome = 4;
    }
    ::_exit(outcome);
  }

  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child did not exit normally, status " << status;
  // 1: no exception, 2: errno is not EACCES, 3: message differs, 4: not IoError, 10: could not drop root.
  EXPECT_EQ(WEXITSTATUS(status), 0);

  EXPECT_TRUE(entries_in(locked).empty());
}

TEST_F(AtomicFileTest, WriteFailureLeavesNoFile) {
  // A child process limits its file size to 1000 bytes (RLIMIT_FSIZE), so
  // write() fails with EFBIG part way through a 5000-byte file. SIGXFSZ is
  // ignored so the write returns the error instead of killing the child.
  const fs::path path = directory_ / "mask.npy";
  write_file_atomic(path, std::string_view("previous version"));

  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const struct rlimit limit = {1000, 1000};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(10);

    int outcome = 0;
    try {
      write_file_atomic(path, std::string(5000, 'x'));
      outcome = 1;
    } catch (const IoError& error) {
      const std::string expected = "write failed for " + path.string() + ": File too large (errno 27)";
      if (error.errno_value() != EFBIG) outcome = 2;
      else if (error.what() != expected) outcome = 3;
    } catch (...) {
      outcome = 4;
    }
    ::_exit(outcome);
  }

  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child did not exit normally, status " << status;
  // 1: no exception, 2: errno is not EFBIG, 3: message differs, 4: not IoError, 10: setrlimit failed.
  EXPECT_EQ(WEXITSTATUS(status), 0);

  EXPECT_EQ(read_file(path), "previous version");
  EXPECT_EQ(entries_in(directory_), std::vector<std::string>{"mask.npy"});
}

TEST_F(AtomicFileTest, ReadMissingFileThrows) {
  const fs::path path = directory_ / "absent.txt";
  try {
    read_file(path);
    FAIL() << "expected IoError for " << path;
  } catch (const IoError& error) {
    EXPECT_EQ(error.errno_value(), ENOENT);
    EXPECT_NE(std::string(error.what()).find("open failed for " + path.string()), std::string::npos)
        << error.what();
  }
}

TEST_F(AtomicFileTest, ReadDirectoryThrows) {
  try {
    read_file(directory_);
    FAIL() << "expected IoError for " << directory_;
  } catch (const IoError& error) {
    EXPECT_EQ(error.errno_value(), EISDIR);
    EXPECT_NE(std::string(error.what()).find("read failed for " + directory_.string()), std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace scaffold
