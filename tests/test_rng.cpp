// Tests for CounterRng: Philox4x32-10 known answers, the (seed, purpose, item,
// block) mapping, determinism, stream independence and distribution checks.
#include "core/rng.hpp"

#include <Random123/philox.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <vector>

namespace scaffold {
namespace {

using Block = std::array<std::uint32_t, 4>;

// Philox4x32-10 written out here without Random123's code (10 rounds of two
// 32x32->64 multiplies, Weyl key schedule), so both the library and our use of it are checked.
Block philox_reference(Block counter, std::array<std::uint32_t, 2> key) {
  constexpr std::uint64_t kMultiplier0 = 0xD2511F53;
  constexpr std::uint64_t kMultiplier1 = 0xCD9E8D57;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9;
  constexpr std::uint32_t kWeyl1 = 0xBB67AE85;

  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kWeyl0;
      key[1] += kWeyl1;
    }
    const std::uint64_t product0 = kMultiplier0 * counter[0];
    const std::uint64_t product1 = kMultiplier1 * counter[2];
    const auto hi0 = static_cast<std::uint32_t>(product0 >> 32);
    const auto lo0 = static_cast<std::uint32_t>(product0);
    const auto hi1 = static_cast<std::uint32_t>(product1 >> 32);
    const auto lo1 = static_cast<std::uint32_t>(product1);
    counter = {hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0};
  }
  return counter;
}

Block philox_random123(const Block& counter, const std::array<std::uint32_t, 2>& key) {
  const r123::Philox4x32::ctr_type c = {{counter[0], counter[1], counter[2], counter[3]}};
  const r123::Philox4x32::key_type k = {{key[0], key[1]}};
  const r123::Philox4x32::ctr_type out = r123::Philox4x32()(c, k);
  return {out.v[0], out.v[1], out.v[2], out.v[3]};
}

struct KnownAnswer {
  Block counter;
  std::array<std::uint32_t, 2> key;
  Block expected;
};

// philox4x32 10 vectors from Random123's kat_vectors file (counter, key, output).
const std::array<KnownAnswer, 3> kKnownAnswers = {{
    {{0x00000000, 0x00000000, 0x00000000, 0x00000000},
     {0x00000000, 0x00000000},
     {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
}};

TEST(Philox, Random123MatchesKnownAnswers) {
  for (const KnownAnswer& answer : kKnownAnswers) {
    EXPECT_EQ(philox_random123(answer.counter, answer.key), answer.expected);
  }
}

TEST(Philox, ReferenceMatchesKnownAnswers) {
  for (const KnownAnswer& answer : kKnownAnswers) {
    EXPECT_EQ(philox_reference(answer.counter, answer.key), answer.expected);
  }
}

TEST(CounterRng, ZeroKeyZeroCounterKnownAnswer) {
  // Purpose 0 is not a named purpose, but it makes the first counter all zero,
  // so the first block must be the published all-zero answer.
  CounterRng rng(0, static_cast<RngPurpose>(0), 0);
  EXPECT_EQ(rng.next_u32(), 0x6627e8d5u);
  EXPECT_EQ(rng.next_u32(), 0xe169c58du);
  EXPECT_EQ(rng.next_u32(), 0xbc57ac4cu);
  EXPECT_EQ(rng.next_u32(), 0x9b00dbd8u);
}

TEST(CounterRng, CounterAndKeyMapping) {
  // Seed and item both use their high 32 bits, so a swapped or dropped word shows.
  const std::uint64_t seed = 0x0123456789abcdefULL;
  const std::uint64_t item = 0x00000005fedcba98ULL;
  const auto purpose = RngPurpose::kInstancePoints;
  const std::array<std::uint32_t, 2> key = {0x89abcdef, 0x01234567};

  CounterRng rng(seed, purpose, item);
  for (std::uint32_t block = 0; block < 3; ++block) {
    const Block expected = philox_reference({3, 0xfedcba98, 0x00000005, block}, key);
    for (int word = 0; word < 4; ++word) {
      EXPECT_EQ(rng.next_u32(), expected[word]) << "block " << block << ", word " << word;
    }
  }
}

TEST(CounterRng, U64JoinsWordsLowFirst) {
  const Block first = philox_reference({1, 7, 0, 0}, {42, 0});
  const Block second = philox_reference({1, 7, 0, 1}, {42, 0});

  CounterRng rng(42, RngPurpose::kClassParams, 7);
  EXPECT_EQ(rng.next_u64(), first[0] | (std::uint64_t{first[1]} << 32));
  EXPECT_EQ(rng.next_u64(), first[2] | (std::uint64_t{first[3]} << 32));
  EXPECT_EQ(rng.next_u64(), second[0] | (std::uint64_t{second[1]} << 32));
}

TEST(CounterRng, UniformUsesTop53Bits) {
  CounterRng bits(9, RngPurpose::kSplit, 0);
  CounterRng values(9, RngPurpose::kSplit, 0);
  for (int i = 0; i < 100; ++i) {
    const double expected = static_cast<double>(bits.next_u64() >> 11) / 9007199254740992.0;
    EXPECT_EQ(values.uniform(), expected);
  }
}

TEST(CounterRng, SameKeyGivesSameStream) {
  CounterRng a(42, RngPurpose::kVolumeContents, 3);
  CounterRng b(42, RngPurpose::kVolumeContents, 3);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.next_u64(), b.next_u64()) << "draw " << i;
}

TEST(CounterRng, DifferentKeysGiveDifferentStreams) {
  // First 64-bit draws of streams that differ in exactly one part of the key.
  std::vector<std::uint64_t> first_draws;
  first_draws.push_back(CounterRng(42, RngPurpose::kClassParams, 0).next_u64());
  first_draws.push_back(CounterRng(42, RngPurpose::kClassPoints, 0).next_u64());
  first_draws.push_back(CounterRng(42, RngPurpose::kClassParams, 1).next_u64());
  first_draws.push_back(CounterRng(42, RngPurpose::kClassParams, std::uint64_t{1} << 32).next_u64());
  first_draws.push_back(CounterRng(43, RngPurpose::kClassParams, 0).next_u64());
  first_draws.push_back(CounterRng(42 + (std::uint64_t{1} << 32), RngPurpose::kClassParams, 0).next_u64());

  const std::set<std::uint64_t> distinct(first_draws.begin(), first_draws.end());
  EXPECT_EQ(distinct.size(), first_draws.size());
}

TEST(CounterRng, NeighbouringItemsAreUncorrelated) {
  // Pearson correlation of uniform() between items 0 and 1 over n draws has
  // standard deviation 1/sqrt(n), so 6/sqrt(n) bounds it with a wide margin.
  constexpr int kDraws = 100000;
  CounterRng a(42, RngPurpose::kInstancePoints, 0);
  CounterRng b(42, RngPurpose::kInstancePoints, 1);
  double sum_a = 0, sum_b = 0, sum_ab = 0, sum_aa = 0, sum_bb = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double x = a.uniform();
    const double y = b.uniform();
    sum_a += x;
    sum_b += y;
    sum_ab += x * y;
    sum_aa += x * x;
    sum_bb += y * y;
  }
  const double covariance = sum_ab / kDraws - (sum_a / kDraws) * (sum_b / kDraws);
  const double variance_a = sum_aa / kDraws - (sum_a / kDraws) * (sum_a / kDraws);
  const double variance_b = sum_bb / kDraws - (sum_b / kDraws) * (sum_b / kDraws);
  const double correlation = covariance / std::sqrt(variance_a * variance_b);
  EXPECT_LT(std::abs(correlation), 6.0 / std::sqrt(kDraws));
}

TEST(CounterRng, UniformRangeMeanAndVariance) {
  // U[0,1) has mean 1/2 and variance 1/12. Over n draws the sample mean has
  // standard deviation sqrt(1/12/n) and the sample variance about
  // sqrt((1/80 - 1/144)/n). The bounds below are six standard deviations.
  constexpr int kDraws = 1000000;
  CounterRng rng(7, RngPurpose::kWeightSample, 0);
  double sum = 0;
  double sum_squares = 0;
  double smallest = 1;
  double largest = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double x = rng.uniform();
    ASSERT_GE(x, 0.0);
    ASSERT_LT(x, 1.0);
    sum += x;
    sum_squares += x * x;
    smallest = std::min(smallest, x);
    largest = std::max(largest, x);
  }
  const double mean = sum / kDraws;
  const double variance = sum_squares / kDraws - mean * mean;
  EXPECT_NEAR(mean, 0.5, 6 * std::sqrt(1.0 / 12 / kDraws));
  EXPECT_NEAR(variance, 1.0 / 12, 6 * std::sqrt((1.0 / 80 - 1.0 / 144) / kDraws));
  EXPECT_LT(smallest, 1e-4);
  EXPECT_GT(largest, 1 - 1e-4);
}

TEST(CounterRng, UniformInInterval) {
  CounterRng rng(7, RngPurpose::kColours, 0);
  double sum = 0;
  constexpr int kDraws = 100000;
  for (int i = 0; i < kDraws; ++i) {
    const double x = rng.uniform(-3.0, 5.0);
    ASSERT_GE(x, -3.0);
    ASSERT_LT(x, 5.0);
    sum += x;
  }
  // Mean 1, standard deviation of the mean 8/sqrt(12 n).
  EXPECT_NEAR(sum / kDraws, 1.0, 6 * 8 / std::sqrt(12.0 * kDraws));
}

TEST(CounterRng, BelowCountsPassChiSquare) {
  // With 10 bins, chi-square has 9 degrees of freedom, and P(chi2 > 40) < 1e-5.
  constexpr std::uint64_t kBins = 10;
  constexpr int kDraws = 200000;
  CounterRng rng(11, RngPurpose::kTrainShuffle, 2);
  std::array<int, kBins> counts{};
  for (int i = 0; i < kDraws; ++i) {
    const std::uint64_t value = rng.below(kBins);
    ASSERT_LT(value, kBins);
    ++counts[value];
  }
  const double expected = static_cast<double>(kDraws) / kBins;
  double chi_square = 0;
  for (const int count : counts) chi_square += (count - expected) * (count - expected) / expected;
  for (std::uint64_t bin = 0; bin < kBins; ++bin) EXPECT_GT(counts[bin], 0) << "bin " << bin;
  EXPECT_LT(chi_square, 40.0);
}

TEST(CounterRng, BelowRejectsBiasedRange) {
  // For n = 3 * 2^62, 2^64 mod n = 2^62, so plain modulo would return values in
  // [0, 2^62) with probability 1/2 instead of the unbiased 1/3.
  const std::uint64_t n = std::uint64_t{3} << 62;
  const std::uint64_t first_third_end = std::uint64_t{1} << 62;
  constexpr int kDraws = 10000;
  CounterRng rng(5, RngPurpose::kModelInit, 0);
  int in_first_third = 0;
  for (int i = 0; i < kDraws; ++i) {
    const std::uint64_t value = rng.below(n);
    ASSERT_LT(value, n);
    if (value < first_third_end) ++in_first_third;
  }
  // Binomial(10000, 1/3) has standard deviation 47, and the biased mean would be 5000.
  EXPECT_NEAR(in_first_third, kDraws / 3, 300);
}

TEST(CounterRng, BelowOneIsZero) {
  CounterRng rng(5, RngPurpose::kModelInit, 0);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(rng.below(1), 0u);
}

TEST(CounterRng, BelowZeroThrows) {
  CounterRng rng(5, RngPurpose::kModelInit, 0);
  EXPECT_THROW(rng.below(0), std::invalid_argument);
}

}  // namespace
}  // namespace scaffold
