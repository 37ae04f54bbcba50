#include "dist/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

namespace scaffold {
namespace {

// Ranks with the same message, in increasing order.
struct MessageGroup {
  std::string message;
  std::vector<int> ranks;
};

// "rank 3", "ranks 0-2, 5": consecutive ranks are written as ranges.
std::string format_rank_list(const std::vector<int>& ranks) {
  std::string ranges;
  std::size_t begin = 0;
  while (begin < ranks.size()) {
    std::size_t end = begin;
    while (end + 1 < ranks.size() && ranks[end + 1] == ranks[end] + 1) ++end;

    if (!ranges.empty()) ranges += ", ";
    ranges += end == begin ? fmt::format("{}", ranks[begin]) : fmt::format("{}-{}", ranks[begin], ranks[end]);
    begin = end + 1;
  }
  return (ranks.size() == 1 ? "rank " : "ranks ") + ranges;
}

}  // namespace

DistributedError::DistributedError(std::string phase, std::vector<RankFailure> failures, int world_size)
    : std::runtime_error(format_rank_failures(phase, failures, world_size)),
      phase_(std::move(phase)),
      failures_(std::move(failures)),
      world_size_(world_size) {}

std::string format_rank_failures(std::string_view phase, const std::vector<RankFailure>& failures, int world_size,
                                 std::size_t max_entries) {
  if (failures.empty()) return fmt::format("{} failed on no rank", phase);
  if (failures.size() == 1) {
    return fmt::format("{} failed on rank {}: {}", phase, failures.front().rank, failures.front().message);
  }

  // Group identical messages so that a failure shared by thousands of ranks
  // (a full disk, a missing file) stays one line.
  std::vector<RankFailure> sorted = failures;
  std::sort(sorted.begin(), sorted.end(), [](const RankFailure& a, const RankFailure& b) { return a.rank < b.rank; });
  std::vector<MessageGroup> groups;
  for (const RankFailure& failure : sorted) {
    auto group = std::find_if(groups.begin(), groups.end(),
                              [&](const MessageGroup& g) { return g.message == failure.message; });
    if (group == groups.end()) {
      groups.push_back({failure.message, {failure.rank}});
    } else {
      group->ranks.push_back(failure.rank);
    }
  }

  std::string text = fmt::format("{} failed on {} of {} ranks: ", phase, failures.size(), world_size);
  const std::size_t listed = std::min(groups.size(), std::max<std::size_t>(max_entries, 1));
  for (std::size_t i = 0; i < listed; ++i) {
    if (i > 0) text += "; ";
    text += format_rank_list(groups[i].ranks) + ": " + groups[i].message;
  }
  if (listed < groups.size()) {
    text += fmt::format("; and {} more distinct messages in the failed ranks' logs", groups.size() - listed);
  }
  return text;
}

}  // namespace scaffold
