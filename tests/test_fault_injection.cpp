// Tests for the SCAFFOLD_FAULT seam: parsing, call counting, injected errno
// values in write_file_atomic and write_npy, and real SIGKILLs in forked children.
#include "core/fault_injection.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/npy.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

// Sets SCAFFOLD_FAULT for one test and unsets it afterwards, re-reading the plan both times.
class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "scaffold-fault-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp failed for " << pattern;
    directory_ = pattern;
  }

  void TearDown() override {
    ::unsetenv("SCAFFOLD_FAULT");
    reload_fault_plan();
    std::error_code error;
    fs::remove_all(directory_, error);
  }

  static void set_fault(const std::string& spec) {
    ::setenv("SCAFFOLD_FAULT", spec.c_str(), 1);
    reload_fault_plan();
  }

  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory_)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path directory_;
};

// Runs `body` in a forked child and returns its wait status.
template <typename Body>
int run_in_child(Body body) {
  const pid_t child = ::fork();
  if (child == 0) {
    body();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return status;
}

TEST_F(FaultTest, UnsetVariableInjectsNothing) {
  ::unsetenv("SCAFFOLD_FAULT");
  reload_fault_plan();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(fault_point("instance_write"), 0) << "call " << i + 1;
}

TEST_F(FaultTest, EmptyVariableInjectsNothing) {
  set_fault("");
  EXPECT_EQ(fault_point("instance_write"), 0);
}

TEST_F(FaultTest, OnlyTheSelectedCallFails) {
  set_fault("npy_write:3:ENOSPC");
  EXPECT_EQ(fault_point("npy_write"), 0);
  EXPECT_EQ(fault_point("instance_write"), 0) << "another point is not counted";
  EXPECT_EQ(fault_point("npy_write"), 0);
  EXPECT_EQ(fault_point("npy_write"), ENOSPC);
  EXPECT_EQ(fault_point("npy_write"), 0) << "the fault fires once";
}

TEST_F(FaultTest, ErrnoByNameOrNumber) {
  set_fault("p:1:EIO");
  EXPECT_EQ(fault_point("p"), EIO);
  set_fault("p:1:EACCES");
  EXPECT_EQ(fault_point("p"), EACCES);
  set_fault("p:2:28");
  EXPECT_EQ(fault_point("p"), 0);
  EXPECT_EQ(fault_point("p"), 28);
}

TEST_F(FaultTest, MalformedSpecsNameTheVariable) {
  for (const std::string spec : {"instance_write", ":3", "p:0", "p:x", "p:3:", "p:3:EWHAT", "p:3:0", "p:3:99999"}) {
    set_fault(spec);
    try {
      fault_point("p");
      ADD_FAILURE() << "accepted SCAFFOLD_FAULT=" << spec;
    } catch (const std::invalid_argument& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find("SCAFFOLD_FAULT='" + spec + "' is invalid"), std::string::npos) << message;
      EXPECT_NE(message.find("NAME:N:ERRNO"), std::string::npos) << message;
    }
  }
}

TEST_F(FaultTest, CountIsSharedAcrossThreads) {
  // 4 threads x 500 calls: exactly one of the 2000 calls is call 1234.
  set_fault("p:1234:EIO");
  std::atomic<int> injected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        if (fault_point("p") == EIO) ++injected;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(injected.load(), 1);
}

TEST_F(FaultTest, KillModeSendsSigkillAtTheSelectedCall) {
  // The child records each call it starts in a file; it must die during call 3.
  const fs::path progress = directory_ / "progress";
  const fs::path stderr_path = directory_ / "stderr";
  const int status = run_in_child([&] {
    const int log = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(log, STDERR_FILENO);
    ::setenv("SCAFFOLD_FAULT", "instance_write:3", 1);
    reload_fault_plan();
    for (int call = 1; call <= 5; ++call) {
      write_file_atomic(progress, std::to_string(call));
      fault_point("instance_write");
    }
  });

  ASSERT_TRUE(WIFSIGNALED(status)) << "child was not killed, status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_EQ(read_file(progress), "3");
  EXPECT_NE(read_file(stderr_path).find("SCAFFOLD_FAULT=instance_write:3: killing the process with SIGKILL at call 3 "
                                        "of fault point instance_write"),
            std::string::npos)
      << read_file(stderr_path);
}

TEST_F(FaultTest, InjectedWriteErrorLeavesNoFile) {
  const fs::path path = directory_ / "000000_0000.npy";
  set_fault("atomic_write:1:ENOSPC");
  try {
    write_file_atomic(path, std::string(1000, 'x'));
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_EQ(error.errno_value(), ENOSPC);
    EXPECT_STREQ(error.what(),
                 ("write failed for " + path.string() + ": No space left on device (errno 28)").c_str());
  }
  EXPECT_EQ(entries(), std::vector<std::string>{});
}

TEST_F(FaultTest, InjectedRenameErrorKeepsPreviousFile) {
  const fs::path path = directory_ / "meta.yaml";
  write_file_atomic(path, std::string_view("old\n"));
  set_fault("atomic_rename:1:EACCES");
  try {
    write_file_atomic(path, std::string_view("new\n"));
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_EQ(error.errno_value(), EACCES);
    EXPECT_STREQ(error.what(), ("rename failed for " + path.string() + ": Permission denied (errno 13)").c_str());
  }
  EXPECT_EQ(read_file(path), "old\n");
  EXPECT_EQ(entries(), std::vector<std::string>{"meta.yaml"});
}

TEST_F(FaultTest, NpyWritePointCountsOnlyNpyFiles) {
  // The text file is not an .npy write, so the second .npy file is call 2.
  set_fault("npy_write:2:EIO");
  const std::vector<float> values(6, 1.0f);
  write_npy(directory_ / "a.npy", DType::kFloat32, {2, 3}, values.data());
  write_file_atomic(directory_ / "b.txt", std::string_view("text"));
  EXPECT_THROW(write_npy(directory_ / "c.npy", DType::kFloat32, {2, 3}, values.data()), IoError);
  write_npy(directory_ / "d.npy", DType::kFloat32, {2, 3}, values.data(), "instance_write");
  EXPECT_EQ(entries(), (std::vector<std::string>{"a.npy", "b.txt", "d.npy"}));
}

TEST_F(FaultTest, CallerNamedPointFailsWrite) {
  set_fault("instance_write:1:EIO");
  const std::vector<float> values(6, 1.0f);
  write_npy(directory_ / "plain.npy", DType::kFloat32, {2, 3}, values.data());
  try {
    write_npy(directory_ / "instance.npy", DType::kFloat32, {2, 3}, values.data(), "instance_write");
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_NE(std::string(error.what()).find("instance.npy: Input/output error (errno 5)"), std::string::npos)
        << error.what();
  }
  EXPECT_EQ(entries(), std::vector<std::string>{"plain.npy"});
}

TEST_F(FaultTest, KillBeforeRenameLeavesCompleteTemporary) {
  const fs::path path = directory_ / "volume.npy";
  const std::string contents(5000, 'v');
  const int status = run_in_child([&] {
    ::setenv("SCAFFOLD_FAULT", "atomic_rename:1", 1);
    reload_fault_plan();
    write_file_atomic(path, contents);
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;

  // The final name never appears, and the temporary file contains all the data.
  EXPECT_FALSE(fs::exists(path));
  const std::vector<std::string> names = entries();
  ASSERT_EQ(names.size(), 1u);
  EXPECT_TRUE(names[0].starts_with(".volume.npy.tmp")) << names[0];
  EXPECT_EQ(read_file(directory_ / names[0]), contents);

  // The writer is dead, so the temporary file is an orphan.
  EXPECT_EQ(remove_orphaned_temporary_files(directory_), 1);
  EXPECT_EQ(entries(), std::vector<std::string>{});
}

TEST_F(FaultTest, KillMidWriteLeavesHalfTemporary) {
  const fs::path path = directory_ / "mask.npy";
  const int status = run_in_child([&] {
    ::setenv("SCAFFOLD_FAULT", "atomic_write:1", 1);
    reload_fault_plan();
    write_file_atomic(path, std::string(5001, 'm'));
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;

  const std::vector<std::string> names = entries();
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(fs::file_size(directory_ / names[0]), 2500u);
}

TEST(TemporaryFileOwner, ParsesOnlyTemporaryNames) {
  EXPECT_EQ(temporary_file_owner(".000001.csv.tmp4242"), 4242);
  EXPECT_EQ(temporary_file_owner(".a.tmp1"), 1);
  EXPECT_EQ(temporary_file_owner("000001.csv"), -1);
  EXPECT_EQ(temporary_file_owner(".000001.csv.tmp"), -1);
  EXPECT_EQ(temporary_file_owner(".000001.csv.tmp12x"), -1);
  EXPECT_EQ(temporary_file_owner(".tmp12"), -1);
  EXPECT_EQ(temporary_file_owner(".lock"), -1);
  EXPECT_EQ(temporary_file_owner("x.tmp12"), -1);
}

TEST_F(FaultTest, LiveWritersTemporaryFileIsKept) {
  // Process 1 always exists, so its temporary file is not an orphan.
  write_file_atomic(directory_ / ".volume.npy.tmp1", std::string_view("in progress"));
  write_file_atomic(directory_ / ("x.npy.tmp" + std::to_string(::getpid())), std::string_view("not hidden"));
  EXPECT_EQ(remove_orphaned_temporary_files(directory_), 0);
  EXPECT_EQ(entries().size(), 2u);
}

}  // namespace
}  // namespace scaffold
