// Tests of keep_freed_memory_for_reuse on glibc's real allocator, observed
// through mallinfo2: large blocks are mapped separately before the policy
// and come from the heap, and stay there when freed, after it.
#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

#include "train/memory_policy.hpp"

namespace {

constexpr std::size_t kLargeBlock = std::size_t{64} << 20;  // above glibc's largest mmap threshold

// Allocates and touches a large block on this (the main) thread and returns
// how many more blocks were mapped separately while it was live.
std::size_t mapped_blocks_for_large_block(std::size_t* free_heap_after) {
  const std::size_t mapped_before = mallinfo2().hblks;
  void* block = std::malloc(kLargeBlock);
  EXPECT_NE(block, nullptr);
  std::memset(block, 1, kLargeBlock);
  const std::size_t mapped = mallinfo2().hblks - mapped_before;
  std::free(block);
  *free_heap_after = mallinfo2().fordblks;
  return mapped;
}

// One test, because the policy changes the whole process and the order of
// the three phases matters.
TEST(MemoryPolicy, KeepsLargeBlocksInHeap) {
  std::size_t free_heap = 0;
  ASSERT_GE(mapped_blocks_for_large_block(&free_heap), 1u) << "glibc's default should map a 64 MiB block";

  // Turned off through the environment: nothing changes.
  ::setenv("SCAFFOLD_KEEP_FREED_MEMORY", "0", 1);
  EXPECT_FALSE(scaffold::keep_freed_memory_for_reuse());
  ::unsetenv("SCAFFOLD_KEEP_FREED_MEMORY");
  EXPECT_GE(mapped_blocks_for_large_block(&free_heap), 1u);

  // On: the block comes from the heap and stays in it after free.
  ASSERT_TRUE(scaffold::keep_freed_memory_for_reuse());
  EXPECT_EQ(mapped_blocks_for_large_block(&free_heap), 0u);
  EXPECT_GE(free_heap, kLargeBlock);
}

}  // namespace
