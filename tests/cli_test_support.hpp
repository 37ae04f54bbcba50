// Helpers for tests that run the real scaffold command in a temporary folder.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace scaffold_test {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell in `dir`, capturing its output.
inline CommandResult run_in(const std::filesystem::path& dir, const std::string& command) {
  const std::string full = "cd '" + dir.string() + "' && " + command + " 2>&1";
  CommandResult result;
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) {
    return result;
  }
  char buffer[4096];
  std::size_t read = 0;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, read);
  }
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// The scaffold command line with `arguments`, on 2 compute threads.
inline std::string scaffold_command(const std::string& arguments) {
  return std::string("OMP_NUM_THREADS=2 ") + SCAFFOLD_BINARY + " " + arguments;
}

// A fresh folder under the system's temporary directory, removed at the end.
class TempDir {
 public:
  explicit TempDir(const std::string& tag)
      : path_(std::filesystem::temp_directory_path() / ("scaffold_" + tag + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// The only entry of `base`, which must hold exactly one run directory.
inline std::filesystem::path only_run_dir(const std::filesystem::path& base) {
  std::vector<std::filesystem::path> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(base)) {
    dirs.push_back(entry.path());
  }
  EXPECT_EQ(dirs.size(), 1u) << base;
  return dirs.empty() ? std::filesystem::path() : dirs.front();
}

}  // namespace scaffold_test
