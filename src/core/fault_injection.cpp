#include "core/fault_injection.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace scaffold {
namespace {

constexpr const char* kVariable = "SCAFFOLD_FAULT";

// errno names accepted in SCAFFOLD_FAULT: the failures a write, fsync or rename can report.
constexpr std::pair<std::string_view, int> kErrnoNames[] = {
    {"ENOSPC", ENOSPC}, {"EIO", EIO},       {"EACCES", EACCES}, {"EPERM", EPERM},   {"EROFS", EROFS},
    {"EFBIG", EFBIG},   {"EDQUOT", EDQUOT}, {"ENOMEM", ENOMEM}, {"EMFILE", EMFILE}, {"ENFILE", ENFILE},
    {"EEXIST", EEXIST}, {"ENOENT", ENOENT}, {"EXDEV", EXDEV},   {"EBUSY", EBUSY},   {"ENOLCK", ENOLCK},
    {"EINVAL", EINVAL},
};

enum PlanState : int { kUnread, kInactive, kActive };

struct FaultPlan {
  std::string spec;      // the variable's value, for the message before a kill
  std::string name;      // fault point
  std::uint64_t call = 0;  // 1-based call that fails
  int errno_value = 0;   // 0: kill with SIGKILL
};

std::atomic<int> g_state{kUnread};
std::atomic<std::uint64_t> g_calls{0};
FaultPlan g_plan;
std::mutex g_load_mutex;

[[noreturn]] void reject(const std::string& spec, const std::string& defect) {
  throw std::invalid_argument(std::string(kVariable) + "='" + spec + "' is invalid: " + defect +
                              "; expected NAME:N or NAME:N:ERRNO, e.g. instance_write:100 or npy_write:3:ENOSPC, or "
                              "unset the variable");
}

std::uint64_t parse_positive(const std::string& spec, std::string_view text, const char* what) {
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value == 0) {
    reject(spec, std::string(what) + " '" + std::string(text) + "' is not a positive integer");
  }
  return value;
}

int parse_errno(const std::string& spec, std::string_view text) {
  for (const auto& [errno_name, value] : kErrnoNames) {
    if (text == errno_name) return value;
  }
  if (!text.empty() && text.front() >= '0' && text.front() <= '9') {
    const std::uint64_t value = parse_positive(spec, text, "errno");
    if (value < 4096) return static_cast<int>(value);
  }
  std::string known;
  for (const auto& entry : kErrnoNames) known += (known.empty() ? "" : " ") + std::string(entry.first);
  reject(spec, "errno '" + std::string(text) + "' is neither a number in 1..4095 nor one of " + known);
}

FaultPlan parse_plan(const std::string& spec) {
  FaultPlan plan;
  plan.spec = spec;

  const std::size_t first_colon = spec.find(':');
  if (first_colon == std::string::npos) reject(spec, "the call number is missing");
  plan.name = spec.substr(0, first_colon);
  if (plan.name.empty()) reject(spec, "the fault point name is empty");

  const std::string_view rest = std::string_view(spec).substr(first_colon + 1);
  const std::size_t second_colon = rest.find(':');
  plan.call = parse_positive(spec, rest.substr(0, second_colon), "call number");
  if (second_colon != std::string_view::npos) plan.errno_value = parse_errno(spec, rest.substr(second_colon + 1));
  return plan;
}

// Reads the variable once; concurrent first calls wait here for the one that reads it.
int load_plan() {
  const std::lock_guard<std::mutex> lock(g_load_mutex);
  const int state = g_state.load(std::memory_order_acquire);
  if (state != kUnread) return state;

  const char* value = std::getenv(kVariable);
  if (value == nullptr || *value == '\0') {
    g_state.store(kInactive, std::memory_order_release);
    return kInactive;
  }
  g_plan = parse_plan(value);
  g_calls.store(0);
  g_state.store(kActive, std::memory_order_release);
  return kActive;
}

[[noreturn]] void kill_self(const char* name, std::uint64_t call) {
  const std::string message = std::string("scaffold: ") + kVariable + "=" + g_plan.spec + ": killing the process with "
                              "SIGKILL at call " + std::to_string(call) + " of fault point " + name + "\n";
  [[maybe_unused]] const ssize_t ignored = ::write(STDERR_FILENO, message.data(), message.size());
  std::raise(SIGKILL);
  std::abort();  // not reached: SIGKILL cannot be caught
}

}  // namespace

int fault_point(const char* name) {
  int state = g_state.load(std::memory_order_acquire);
  if (state == kInactive) return 0;
  if (state == kUnread) state = load_plan();
  if (state != kActive || g_plan.name != name) return 0;

  const std::uint64_t call = g_calls.fetch_add(1) + 1;
  if (call != g_plan.call) return 0;
  if (g_plan.errno_value != 0) return g_plan.errno_value;
  kill_self(name, call);
}

void reload_fault_plan() {
  const std::lock_guard<std::mutex> lock(g_load_mutex);
  g_calls.store(0);
  g_state.store(kUnread, std::memory_order_release);
}

}  // namespace scaffold
