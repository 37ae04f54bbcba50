// Data generation that loses nothing: the real `scaffold generate_fractals`
// and dataset builds in forked children are killed with SIGKILL or given
// injected I/O errors (SCAFFOLD_FAULT) at many points, then run again. The
// files must end up byte-identical to an uninterrupted run, with no temporary
// file or staging directory left. Also: file locks, concurrent runs, and full
// disks through RLIMIT_FSIZE.
//
// This process itself never runs OpenMP code, because libgomp does not support
// OpenMP in a child forked after the parent used it. Generation runs in the
// scaffold binary or in forked children only.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "core/atomic_file.hpp"
#include "core/config.hpp"
#include "core/fault_injection.hpp"
#include "core/file_lock.hpp"
#include "dataset/dataset.hpp"
#include "fractal/library.hpp"

extern char** environ;

namespace scaffold {
namespace {

namespace fs = std::filesystem;

const fs::path kBinary = SCAFFOLD_BINARY;

// Parent of the test directories: $TMPDIR when set, else /dev/shm when it is
// usable, because every generated file is written with fsync.
fs::path test_base_dir() {
  if (std::getenv("TMPDIR") == nullptr && fs::is_directory("/dev/shm") && ::access("/dev/shm", W_OK) == 0) {
    return "/dev/shm";
  }
  return fs::temp_directory_path();
}

// A fresh directory per test, removed afterwards.
class RobustTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::is_regular_file(kBinary)) << kBinary << " is missing; build the scaffold target first";
    std::string pattern = (test_base_dir() / "scaffold-robust-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp failed for " << pattern;
    root_ = pattern;
  }
  void TearDown() override {
    std::error_code error;
    fs::remove_all(root_, error);
  }

  fs::path root_;
};

// Scale 4 (16^3 voxels, 16 points per instance), 3 classes, 6 volumes.
fs::path write_config(const fs::path& dir) {
  fs::create_directories(dir);
  const fs::path path = dir / "config.yml";
  write_file_atomic(path, "fract_base_dir: \"" + (dir / "fractals").string() +
                              "\"\n"
                              "dataset_dir: \"" +
                              (dir / "datasets").string() +
                              "\"\n"
                              "seed: 11\n"
                              "problem_scale: 4\n"
                              "n_categories: 3\n"
                              "n_instances_used_per_fractal: 6\n"
                              "n_fracts_per_vol: 3\n"
                              "val_split: 50\n");
  return path;
}

struct ProcessResult {
  int status = 0;
  std::string output;  // stdout and stderr together

  bool killed() const { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

// The environment of this process with `extra` ("NAME=value") added or replacing.
std::vector<std::string> environment_with(const std::vector<std::string>& extra) {
  std::vector<std::string> result;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    const std::string name = text.substr(0, text.find('='));
    const bool replaced = std::any_of(extra.begin(), extra.end(),
                                      [&](const std::string& e) { return e.substr(0, e.find('=')) == name; });
    if (!replaced && name != "SCAFFOLD_FAULT") result.push_back(text);
  }
  result.insert(result.end(), extra.begin(), extra.end());
  return result;
}

// Starts `scaffold args...` with its output going to `output_path`.
pid_t start_scaffold(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
                     const fs::path& output_path) {
  std::vector<std::string> argv_strings = {kBinary.string()};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_strings) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings = environment_with(extra_env);
  std::vector<char*> envp;
  for (std::string& entry : env_strings) envp.push_back(entry.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(error, 0) << "posix_spawn of " << kBinary << " failed";
  return pid;
}

ProcessResult wait_for(pid_t pid, const fs::path& output_path) {
  ProcessResult result;
  ::waitpid(pid, &result.status, 0);
  result.output = read_file(output_path);
  return result;
}

ProcessResult run_scaffold(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
                           const fs::path& output_path) {
  return wait_for(start_scaffold(args, extra_env, output_path), output_path);
}

ProcessResult generate_fractals(const fs::path& config, const std::string& fault = "") {
  std::vector<std::string> env = {"OMP_NUM_THREADS=2"};
  if (!fault.empty()) env.push_back("SCAFFOLD_FAULT=" + fault);
  return run_scaffold({"-q", "generate_fractals", "-c", config.string()}, env, config.parent_path() / "output.txt");
}

// Runs `body` in a forked child with SCAFFOLD_FAULT set to `fault` (none when
// empty). The child exits 0 when `body` returns and 1 with the message in
// `output_path` when it throws.
ProcessResult run_in_child(const std::string& fault, const fs::path& output_path, const std::function<void()>& body) {
  const pid_t child = ::fork();
  if (child == 0) {
    const int log = ::open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(log, STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);
    if (fault.empty()) {
      ::unsetenv("SCAFFOLD_FAULT");
    } else {
      ::setenv("SCAFFOLD_FAULT", fault.c_str(), 1);
    }
    reload_fault_plan();
    spdlog::set_level(spdlog::level::warn);
    try {
      body();
    } catch (const std::exception& error) {
      const std::string message = std::string("error: ") + error.what() + "\n";
      [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, message.data(), message.size());
      ::_exit(1);
    }
    ::_exit(0);
  }
  ProcessResult result;
  ::waitpid(child, &result.status, 0);
  result.output = read_file(output_path);
  return result;
}

ProcessResult build_dataset_in_child(const fs::path& config_path, const std::string& fault = "") {
  const Config config = load_config({config_path});
  return run_in_child(fault, config_path.parent_path() / "dataset_output.txt", [&] { ensure_dataset(config); });
}

// Every regular file under `dir`, by relative path, with its contents.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files[fs::relative(entry.path(), dir).string()] = read_file(entry.path());
  }
  return files;
}

// Names each difference between two snapshots instead of printing whole files.
void expect_same_files(const std::map<std::string, std::string>& actual,
                       const std::map<std::string, std::string>& expected, const std::string& context) {
  EXPECT_EQ(actual.size(), expected.size()) << context;
  int reported = 0;
  for (const auto& [name, content] : expected) {
    const auto found = actual.find(name);
    if (found == actual.end()) {
      ADD_FAILURE() << context << ": missing file " << name;
    } else if (found->second != content) {
      ADD_FAILURE() << context << ": different content in " << name;
    } else {
      continue;
    }
    if (++reported == 10) return;
  }
  for (const auto& [name, content] : actual) {
    if (!expected.contains(name)) ADD_FAILURE() << context << ": unexpected file " << name;
  }
}

// Temporary files (".<name>.tmp<pid>") and staging directories (".tmp_*") under `dir`.
std::vector<std::string> leftovers(const fs::path& dir) {
  std::vector<std::string> found;
  if (!fs::exists(dir)) return found;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool temporary_file = name.starts_with('.') && name.find(".tmp") != std::string::npos;
    if (temporary_file || name.starts_with(".tmp_")) found.push_back(fs::relative(entry.path(), dir).string());
  }
  return found;
}

// The finished dataset directories in <dataset_dir>/<config_id>/, without staging directories or the lock.
std::vector<fs::path> dataset_dirs(const fs::path& config_path) {
  const Config config = load_config({config_path});
  const fs::path root = fs::path(config.dataset_dir) / dataset_config_id(config);
  std::vector<fs::path> dirs;
  if (!fs::exists(root)) return dirs;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && !entry.path().filename().string().starts_with('.')) dirs.push_back(entry.path());
  }
  return dirs;
}

// A dataset's files with the creation time removed from meta.yaml, which is
// the only content that differs between two builds of one config.
std::map<std::string, std::string> dataset_snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files = snapshot(dir);
  std::string& meta = files["meta.yaml"];
  const std::size_t start = meta.find("created_at: ");
  EXPECT_NE(start, std::string::npos) << "meta.yaml has no created_at in " << dir;
  if (start != std::string::npos) meta.erase(start, meta.find('\n', start) + 1 - start);
  return files;
}

// ---- killed and resumed fractal generation ----

TEST_F(RobustTest, KilledFractalGenerationResumesToSameFiles) {
  const fs::path reference_config = write_config(root_ / "reference");
  const ProcessResult reference = generate_fractals(reference_config);
  ASSERT_EQ(reference.exit_code(), 0) << reference.output;
  const auto expected = snapshot(root_ / "reference" / "fractals");
  // 3 classes, the search position, the lock file and 3 x 145 instances.
  ASSERT_EQ(expected.size(), 3u + 1u + 1u + 3u * 145u);

  // Kill points in the class search (class_write, the first renames), while
  // instances are written, half-way through a write and just before a rename.
  for (const std::string fault : {"class_write:1", "class_write:3", "atomic_rename:2", "instance_write:1",
                                  "instance_write:200", "npy_write:435", "atomic_write:150", "atomic_rename:300"}) {
    SCOPED_TRACE(fault);
    const fs::path dir = root_ / ("kill_" + fault.substr(0, fault.find(':')) + fault.substr(fault.find(':') + 1));
    const fs::path config = write_config(dir);

    const ProcessResult killed = generate_fractals(config, fault);
    ASSERT_TRUE(killed.killed()) << "status " << killed.status << ": " << killed.output;
    EXPECT_NE(killed.output.find("SCAFFOLD_FAULT=" + fault + ": killing the process"), std::string::npos)
        << killed.output;
    EXPECT_FALSE(leftovers(dir / "fractals").empty()) << "every kill point is inside a write, so a temporary file stays";

    const ProcessResult rerun = generate_fractals(config);
    ASSERT_EQ(rerun.exit_code(), 0) << rerun.output;
    expect_same_files(snapshot(dir / "fractals"), expected, fault);
    EXPECT_EQ(leftovers(dir / "fractals"), std::vector<std::string>{});
  }
}

TEST_F(RobustTest, RepeatedKillsStillConverge) {
  // Three kills in a row, each further along, before a clean finish.
  const fs::path reference_config = write_config(root_ / "reference");
  ASSERT_EQ(generate_fractals(reference_config).exit_code(), 0);
  const fs::path config = write_config(root_ / "repeated");

  for (const std::string fault : {"class_write:2", "instance_write:50", "instance_write:100"}) {
    const ProcessResult killed = generate_fractals(config, fault);
    ASSERT_TRUE(killed.killed()) << fault << ": status " << killed.status << ": " << killed.output;
  }
  ASSERT_EQ(generate_fractals(config).exit_code(), 0);
  expect_same_files(snapshot(root_ / "repeated" / "fractals"), snapshot(root_ / "reference" / "fractals"),
                    "after three kills");
  EXPECT_EQ(leftovers(root_ / "repeated" / "fractals"), std::vector<std::string>{});
}

// ---- killed and resumed dataset builds ----

TEST_F(RobustTest, KilledDatasetBuildResumesToSameFiles) {
  const fs::path reference_config = write_config(root_ / "reference");
  const ProcessResult reference = build_dataset_in_child(reference_config);
  ASSERT_EQ(reference.exit_code(), 0) << reference.output;
  const std::vector<fs::path> reference_dirs = dataset_dirs(reference_config);
  ASSERT_EQ(reference_dirs.size(), 1u);
  const auto expected = dataset_snapshot(reference_dirs[0]);
  // 6 volumes and masks, volumes_contents.csv, 2 mask value files, meta.yaml.
  ASSERT_EQ(expected.size(), 2u * 6u + 4u);
  const auto expected_fractals = snapshot(root_ / "reference" / "fractals");

  // Each run below starts from a finished fractal library, so the counts
  // cover only dataset files: 6 volumes, 6 masks, then volumes_contents.csv,
  // the two mask value files and meta.yaml (atomic rename 16).
  for (const std::string fault : {"volume_write:1", "volume_write:4", "mask_write:6", "atomic_write:7",
                                  "atomic_rename:3", "atomic_rename:13", "atomic_rename:16"}) {
    SCOPED_TRACE(fault);
    const fs::path dir = root_ / ("kill_" + fault.substr(0, fault.find(':')) + fault.substr(fault.find(':') + 1));
    const fs::path config = write_config(dir);
    ASSERT_EQ(generate_fractals(config).exit_code(), 0);

    const ProcessResult killed = build_dataset_in_child(config, fault);
    ASSERT_TRUE(killed.killed()) << "status " << killed.status << ": " << killed.output;
    EXPECT_FALSE(leftovers(dir / "datasets").empty()) << "the killed build leaves its staging directory";
    EXPECT_EQ(dataset_dirs(config), std::vector<fs::path>{}) << "no dataset may appear before it is complete";

    const ProcessResult rerun = build_dataset_in_child(config);
    ASSERT_EQ(rerun.exit_code(), 0) << rerun.output;
    const std::vector<fs::path> dirs = dataset_dirs(config);
    ASSERT_EQ(dirs.size(), 1u);
    expect_same_files(dataset_snapshot(dirs[0]), expected, fault);
    expect_same_files(snapshot(dir / "fractals"), expected_fractals, fault + " (fractal library)");
    EXPECT_EQ(leftovers(dir / "datasets"), std::vector<std::string>{});
    EXPECT_EQ(leftovers(dir / "fractals"), std::vector<std::string>{});
  }
}

TEST_F(RobustTest, KillWhileDatasetGeneratesLibraryResumes) {
  // The dataset build generates the missing fractal library itself and is
  // killed in the middle of it; the rerun finishes both.
  const fs::path reference_config = write_config(root_ / "reference");
  ASSERT_EQ(build_dataset_in_child(reference_config).exit_code(), 0);
  const auto expected = dataset_snapshot(dataset_dirs(reference_config).at(0));

  const fs::path config = write_config(root_ / "killed");
  const ProcessResult killed = build_dataset_in_child(config, "instance_write:300");
  ASSERT_TRUE(killed.killed()) << "status " << killed.status << ": " << killed.output;
  const ProcessResult rerun = build_dataset_in_child(config);
  ASSERT_EQ(rerun.exit_code(), 0) << rerun.output;

  const std::vector<fs::path> dirs = dataset_dirs(config);
  ASSERT_EQ(dirs.size(), 1u);
  expect_same_files(dataset_snapshot(dirs[0]), expected, "dataset");
  EXPECT_EQ(leftovers(root_ / "killed"), std::vector<std::string>{});
}

// ---- staging directories and locks ----

TEST_F(RobustTest, StagingOfDeadBuilderRemovedOnNextBuild) {
  const fs::path config_path = write_config(root_ / "run");
  const Config config = load_config({config_path});
  const fs::path dataset_root = fs::path(config.dataset_dir) / dataset_config_id(config);
  ASSERT_EQ(generate_fractals(config_path).exit_code(), 0);

  // A process id that no longer exists: a child that has been reaped.
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const fs::path orphan = dataset_root / (".tmp_20300101-000000_" + std::to_string(dead) + "_0badf00d");
  const fs::path live = dataset_root / ".tmp_20300101-000000_1_00c0ffee";  // process 1 always exists
  for (const fs::path& staging : {orphan, live}) {
    fs::create_directories(staging / "volumes" / "training");
    write_file_atomic(staging / "volumes" / "training" / "0_shard000000.npy", std::string_view("partial"));
  }

  ASSERT_EQ(build_dataset_in_child(config_path).exit_code(), 0);
  EXPECT_FALSE(fs::exists(orphan)) << "staging directory of a dead process survived the build";
  EXPECT_TRUE(fs::exists(live)) << "staging directory of a live process was removed";

  // Debris of a later kill goes on the next start even when the dataset is reused.
  const fs::path later = dataset_root / (".tmp_20300101-000001_" + std::to_string(dead) + "_0badf00d");
  fs::create_directories(later);
  const std::vector<fs::path> before = dataset_dirs(config_path);
  ASSERT_EQ(build_dataset_in_child(config_path).exit_code(), 0);
  EXPECT_EQ(dataset_dirs(config_path), before) << "the dataset was rebuilt instead of reused";
  EXPECT_FALSE(fs::exists(later));
}

TEST(FileLock, SecondHolderExcludedUntilRelease) {
  std::string pattern = (test_base_dir() / "scaffold-lock-XXXXXX").string();
  ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
  const fs::path dir = pattern;
  const fs::path lock_path = dir / ".lock";

  // A child takes the lock and holds it until the parent closes the pipe.
  int ready[2], release[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(release), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(release[1]);  // else the read below never sees end of file
    const FileLock lock(lock_path, "testing");
    const char held = lock.held() ? 'y' : 'n';
    [[maybe_unused]] const ssize_t written = ::write(ready[1], &held, 1);
    char unused;
    [[maybe_unused]] const ssize_t read_bytes = ::read(release[0], &unused, 1);
    ::_exit(0);
  }
  ::close(release[0]);
  ::close(ready[1]);
  char held = 0;
  ASSERT_EQ(::read(ready[0], &held, 1), 1);
  ASSERT_EQ(held, 'y') << "flock is not supported on " << dir;

  EXPECT_FALSE(FileLock::try_acquire(lock_path).has_value()) << "two processes hold the lock";
  EXPECT_TRUE(process_alive(child));

  ::close(release[1]);
  ::waitpid(child, nullptr, 0);
  EXPECT_FALSE(process_alive(child));
  const std::optional<FileLock> lock = FileLock::try_acquire(lock_path);
  ASSERT_TRUE(lock.has_value()) << "the lock outlived its holder";
  EXPECT_TRUE(lock->held());
  EXPECT_EQ(fs::file_size(lock_path), 0u);
  ::close(ready[0]);
  fs::remove_all(dir);
}

TEST_F(RobustTest, GenerationWaitsForLibraryLock) {
  const fs::path reference_config = write_config(root_ / "reference");
  ASSERT_EQ(generate_fractals(reference_config).exit_code(), 0);

  // This process holds the library lock; scaffold must wait for it and write nothing meanwhile.
  const fs::path config_path = write_config(root_ / "run");
  const FractalLibraryPaths paths = fractal_library_paths(load_config({config_path}));
  fs::create_directories(paths.root);
  std::optional<FileLock> lock(std::in_place, library_lock_path(paths), "testing");
  ASSERT_TRUE(lock->held());

  const fs::path output = root_ / "run" / "output.txt";
  const pid_t pid = start_scaffold({"generate_fractals", "-c", config_path.string()}, {"OMP_NUM_THREADS=2"}, output);
  bool waiting = false;
  // A bound against a hang only; the check does not depend on timing.
  for (int poll = 0; poll < 6000 && !waiting; ++poll) {
    waiting = read_file(output).find("waiting for the lock " + library_lock_path(paths).string()) != std::string::npos;
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (::waitpid(pid, nullptr, WNOHANG) == pid) FAIL() << "scaffold ended without waiting: " << read_file(output);
  }
  ASSERT_TRUE(waiting) << read_file(output);
  EXPECT_FALSE(fs::exists(paths.params_dir)) << "scaffold wrote classes while another process held the lock";

  lock.reset();
  const ProcessResult result = wait_for(pid, output);
  ASSERT_EQ(result.exit_code(), 0) << result.output;
  expect_same_files(snapshot(root_ / "run" / "fractals"), snapshot(root_ / "reference" / "fractals"), "after waiting");
}

TEST_F(RobustTest, TwoConcurrentGeneratorsMatchOneRun) {
  const fs::path reference_config = write_config(root_ / "reference");
  ASSERT_EQ(generate_fractals(reference_config).exit_code(), 0);

  const fs::path config = write_config(root_ / "shared");
  const std::vector<std::string> args = {"generate_fractals", "-c", config.string()};
  const pid_t first = start_scaffold(args, {"OMP_NUM_THREADS=1"}, root_ / "first.txt");
  const pid_t second = start_scaffold(args, {"OMP_NUM_THREADS=1"}, root_ / "second.txt");
  const ProcessResult first_result = wait_for(first, root_ / "first.txt");
  const ProcessResult second_result = wait_for(second, root_ / "second.txt");
  EXPECT_EQ(first_result.exit_code(), 0) << first_result.output;
  EXPECT_EQ(second_result.exit_code(), 0) << second_result.output;

  // Whichever process took the lock first wrote every instance; the other found them all.
  const std::string wrote_all = "435 written, 0 reused";
  const std::string wrote_none = "0 written, 435 reused";
  const bool first_wrote = first_result.output.find(wrote_all) != std::string::npos;
  const std::string& writer = first_wrote ? first_result.output : second_result.output;
  const std::string& waiter = first_wrote ? second_result.output : first_result.output;
  EXPECT_NE(writer.find(wrote_all), std::string::npos) << writer;
  EXPECT_NE(waiter.find(wrote_none), std::string::npos) << waiter;

  expect_same_files(snapshot(root_ / "shared" / "fractals"), snapshot(root_ / "reference" / "fractals"),
                    "two generators at once");
  EXPECT_EQ(leftovers(root_ / "shared"), std::vector<std::string>{});
}

TEST_F(RobustTest, TwoConcurrentDatasetBuildsMakeOneDataset) {
  const fs::path config_path = write_config(root_ / "shared");
  ASSERT_EQ(generate_fractals(config_path).exit_code(), 0);
  const Config config = load_config({config_path});

  std::vector<pid_t> children;
  for (int i = 0; i < 2; ++i) {
    const pid_t child = ::fork();
    if (child == 0) {
      spdlog::set_level(spdlog::level::off);
      try {
        ensure_dataset(config);
      } catch (...) {
        ::_exit(1);
      }
      ::_exit(0);
    }
    children.push_back(child);
  }
  for (const pid_t child : children) {
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
    EXPECT_EQ(WEXITSTATUS(status), 0) << "status " << status;
  }
  EXPECT_EQ(dataset_dirs(config_path).size(), 1u) << "both processes built the dataset";
  EXPECT_EQ(leftovers(root_ / "shared"), std::vector<std::string>{});
}

// ---- full disk and I/O errors ----

// The path in "<call> failed for <path>: <reason>" of an error message.
std::string failed_path(const std::string& output, const std::string& call) {
  const std::string marker = call + " failed for ";
  const std::size_t start = output.find(marker);
  if (start == std::string::npos) return "";
  const std::size_t path_start = start + marker.size();
  return output.substr(path_start, output.find(": ", path_start) - path_start);
}

TEST_F(RobustTest, InjectedErrorsStopGenerationNamingPath) {
  struct Case {
    std::string fault;
    std::string call;
    std::string reason;
    std::string file;  // relative to the library root
  };
  // One thread, so the first instance written is class 0, instance 0.
  const std::vector<Case> cases = {
      {"npy_write:1:ENOSPC", "write", "No space left on device (errno 28)", "instances/np16/000000/000000_0000.npy"},
      {"instance_write:1:EACCES", "write", "Permission denied (errno 13)", "instances/np16/000000/000000_0000.npy"},
      {"class_write:1:EIO", "write", "Input/output error (errno 5)", "3DIFS_param/000000.csv"},
      {"atomic_rename:1:ENOSPC", "rename", "No space left on device (errno 28)", "3DIFS_param/000000.csv"},
  };
  for (const Case& test_case : cases) {
    SCOPED_TRACE(test_case.fault);
    const fs::path dir = root_ / ("case" + std::to_string(&test_case - cases.data()));
    const fs::path config = write_config(dir);
    const fs::path library_root = fractal_library_paths(load_config({config})).root;

    const ProcessResult result =
        run_scaffold({"-q", "generate_fractals", "-c", config.string()},
                     {"OMP_NUM_THREADS=1", "SCAFFOLD_FAULT=" + test_case.fault}, dir / "output.txt");
    EXPECT_EQ(result.exit_code(), 1) << result.output;
    const fs::path expected_path = library_root / test_case.file;
    EXPECT_NE(result.output.find(test_case.call + " failed for " + expected_path.string() + ": " + test_case.reason),
              std::string::npos)
        << result.output;
    EXPECT_EQ(failed_path(result.output, test_case.call), expected_path.string());
    EXPECT_FALSE(fs::exists(expected_path)) << "a failed write left a file under its final name";
    EXPECT_EQ(leftovers(dir), std::vector<std::string>{});
  }
}

TEST_F(RobustTest, InjectedErrorStopsDatasetBuildWithoutDebris) {
  const fs::path config_path = write_config(root_ / "run");
  ASSERT_EQ(generate_fractals(config_path).exit_code(), 0);

  for (const std::string fault : {"volume_write:2:ENOSPC", "mask_write:1:EIO", "atomic_rename:16:ENOSPC"}) {
    SCOPED_TRACE(fault);
    const ProcessResult result = build_dataset_in_child(config_path, fault);
    EXPECT_EQ(result.exit_code(), 1) << result.output;
    const std::string reason = fault.ends_with("EIO") ? "Input/output error (errno 5)" : "No space left on device (errno 28)";
    EXPECT_NE(result.output.find(": " + reason), std::string::npos) << result.output;
    const std::string path = failed_path(result.output, fault.starts_with("atomic_rename") ? "rename" : "write");
    EXPECT_NE(path, "") << result.output;
    EXPECT_FALSE(fs::exists(path)) << path;
    EXPECT_EQ(dataset_dirs(config_path), std::vector<fs::path>{});
    EXPECT_EQ(leftovers(root_ / "run"), std::vector<std::string>{});
  }

  // After the faults, a clean build succeeds.
  EXPECT_EQ(build_dataset_in_child(config_path).exit_code(), 0);
  EXPECT_EQ(dataset_dirs(config_path).size(), 1u);
}

TEST_F(RobustTest, FileSizeLimitStopsDatasetBuild) {
  // Instances are 320 bytes and volumes 49,280, so a 20,000-byte limit
  // (RLIMIT_FSIZE) fails the first volume write with EFBIG.
  const fs::path config_path = write_config(root_ / "run");
  ASSERT_EQ(generate_fractals(config_path).exit_code(), 0);
  const Config config = load_config({config_path});

  const ProcessResult result = run_in_child("", root_ / "run" / "child.txt", [&] {
    ::signal(SIGXFSZ, SIG_IGN);
    const struct rlimit limit = {20000, 20000};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(10);
    ensure_dataset(config);
  });
  EXPECT_EQ(result.exit_code(), 1) << result.output;
  EXPECT_NE(result.output.find("File too large (errno 27)"), std::string::npos) << result.output;
  const std::string path = failed_path(result.output, "write");
  EXPECT_TRUE(path.ends_with("_shard000000.npy")) << result.output;
  EXPECT_FALSE(fs::exists(path)) << path;
  EXPECT_EQ(dataset_dirs(config_path), std::vector<fs::path>{});
  EXPECT_EQ(leftovers(root_ / "run"), std::vector<std::string>{});
}

TEST_F(RobustTest, FileSizeLimitStopsRealBinary) {
  // A 300-byte limit on the real scaffold process: a class CSV is about 650
  // bytes, so the first class write fails with EFBIG.
  const fs::path config_path = write_config(root_ / "run");
  const fs::path output = root_ / "run" / "output.txt";
  const pid_t child = ::fork();
  if (child == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // exec keeps an ignored signal ignored
    const struct rlimit limit = {300, 300};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(10);
    const int log = ::open(output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(log, STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::execl(kBinary.c_str(), kBinary.c_str(), "-q", "generate_fractals", "-c", config_path.c_str(), nullptr);
    ::_exit(11);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  const std::string text = read_file(output);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << ": " << text;
  EXPECT_EQ(WEXITSTATUS(status), 1) << text;
  const FractalLibraryPaths paths = fractal_library_paths(load_config({config_path}));
  const fs::path first_class = class_csv_path(paths, 0);
  EXPECT_NE(text.find("write failed for " + first_class.string() + ": File too large (errno 27)"), std::string::npos)
      << text;
  EXPECT_FALSE(fs::exists(first_class));
  EXPECT_EQ(leftovers(root_ / "run"), std::vector<std::string>{});
}

}  // namespace
}  // namespace scaffold
