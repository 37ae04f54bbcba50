// A Google Benchmark console reporter that also keeps, per benchmark name,
// the minimum real time over all repetitions, for ratio tables printed in
// Finalize. The minimum, because on a shared machine other processes only
// ever add time.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace scaffold_bench {

class MinTimeReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration) {
        continue;
      }
      const auto [entry, inserted] = real_times_.emplace(run.benchmark_name(), run.GetAdjustedRealTime());
      if (!inserted) {
        entry->second = std::min(entry->second, run.GetAdjustedRealTime());
      }
    }
  }

 protected:
  // Minimum adjusted real time per benchmark name, in the reporter's unit.
  std::map<std::string, double> real_times_;
};

}  // namespace scaffold_bench
