#include "core/rng.hpp"

#include <Random123/philox.h>

#include <limits>
#include <stdexcept>
#include <string>

namespace scaffold {

CounterRng::CounterRng(std::uint64_t seed, RngPurpose purpose, std::uint64_t item)
    : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
      purpose_(static_cast<std::uint32_t>(purpose)),
      stream_(item) {}

void CounterRng::refill() {
  if (counter_ > std::numeric_limits<std::uint32_t>::max()) {
    throw std::runtime_error("CounterRng stream exhausted: purpose " + std::to_string(purpose_) + ", item " +
                             std::to_string(stream_) + " used all 2^32 Philox blocks; split the work over more items");
  }

  const r123::Philox4x32::ctr_type counter = {{purpose_, static_cast<std::uint32_t>(stream_),
                                               static_cast<std::uint32_t>(stream_ >> 32),
                                               static_cast<std::uint32_t>(counter_)}};
  const r123::Philox4x32::key_type key = {{key_[0], key_[1]}};
  const r123::Philox4x32::ctr_type block = r123::Philox4x32()(counter, key);
  for (int i = 0; i < 4; ++i) buffer_[i] = block.v[i];

  buffered_ = 4;
  ++counter_;
}

std::uint32_t CounterRng::next_u32() {
  if (buffered_ == 0) refill();
  const std::uint32_t value = buffer_[4 - buffered_];
  --buffered_;
  return value;
}

std::uint64_t CounterRng::next_u64() {
  const std::uint64_t low = next_u32();
  const std::uint64_t high = next_u32();
  return low | (high << 32);
}

double CounterRng::uniform() {
  // The top 53 bits fill a double's significand exactly, so every value is a
  // multiple of 2^-53 in [0, 1) and 1.0 is never returned.
  return static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
}

double CounterRng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

std::uint64_t CounterRng::below(std::uint64_t n) {
  if (n == 0) throw std::invalid_argument("CounterRng::below: invalid n = 0, n must be positive");

  // Plain modulo would return the smallest (2^64 mod n) results more often.
  // Rejecting draws below 2^64 mod n leaves a range whose size is a multiple of n.
  const std::uint64_t reject_below = (0 - n) % n;
  while (true) {
    const std::uint64_t value = next_u64();
    if (value >= reject_below) return value % n;
  }
}

}  // namespace scaffold
