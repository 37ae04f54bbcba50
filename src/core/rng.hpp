// Counter-based random numbers (Philox4x32-10 from Random123): every draw is a
// pure function of (seed, purpose, item, counter), so results do not depend on
// thread count, rank count or the order in which items are processed.
#pragma once

#include <cstdint>

namespace scaffold {

// What a stream of random numbers is for. Two purposes never share a stream.
enum class RngPurpose : std::uint32_t {
  kClassParams = 1,      // item: candidate attempt index
  kClassPoints = 2,      // item: candidate attempt index
  kInstancePoints = 3,   // item: category * 2^20 + instance (see fractal/instances)
  kVolumeContents = 4,   // item: category (instance draws), or 0 for the shuffle
  kSplit = 5,            // item: 0
  kColours = 6,          // item: 0
  kTrainShuffle = 7,     // item: epoch
  kModelInit = 8,        // item: 0
  kWeightSample = 9,     // item: 0
};

class CounterRng {
 public:
  CounterRng(std::uint64_t seed, RngPurpose purpose, std::uint64_t item);

  std::uint64_t next_u64();
  std::uint32_t next_u32();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Uniform in [lo, hi).
  double uniform(double lo, double hi);
  // Uniform integer in [0, n) without modulo bias; n > 0.
  std::uint64_t below(std::uint64_t n);

 private:
  void refill();

  std::uint32_t key_[2];
  std::uint64_t stream_;
  std::uint64_t counter_ = 0;
  std::uint32_t buffer_[4] = {0, 0, 0, 0};
  int buffered_ = 0;
};

}  // namespace scaffold
