// Counter-based random numbers (Philox4x32-10 from Random123): every draw is a
// pure function of (seed, purpose, item, counter), so results do not depend on
// thread count, rank count or the order in which items are processed.
#pragma once

#include <cstdint>

namespace scaffold {

// Use of a stream of random numbers. Two purposes never share a stream.
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

// One stream of Philox4x32-10 output. The 64-bit seed is the key (low word
// first); block b of stream (purpose, item) is Philox(counter, key) with
// counter = (purpose, item low 32 bits, item high 32 bits, b), so distinct
// (purpose, item, b) never share a counter. A stream has 2^32 blocks of four
// 32-bit words, which are handed out in order; refill throws std::runtime_error
// past the last block.
class CounterRng {
 public:
  CounterRng(std::uint64_t seed, RngPurpose purpose, std::uint64_t item);

  // Two consecutive 32-bit words, the first one in the low half.
  std::uint64_t next_u64();
  std::uint32_t next_u32();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Uniform in [lo, hi).
  double uniform(double lo, double hi);
  // Uniform integer in [0, n) without modulo bias (rejection sampling);
  // throws std::invalid_argument when n is 0.
  std::uint64_t below(std::uint64_t n);

 private:
  void refill();

  std::uint32_t key_[2];
  std::uint32_t purpose_;
  std::uint64_t stream_;  // the item
  std::uint64_t counter_ = 0;
  std::uint32_t buffer_[4] = {0, 0, 0, 0};
  int buffered_ = 0;
};

}  // namespace scaffold
