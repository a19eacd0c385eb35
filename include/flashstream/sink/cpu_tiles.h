// Sink attention on CPU: tile sizes and scratch sizing, shared by the ISA kernels and the binding
// (which allocates the scratch outside the per-ISA code). Torch-free; no SIMD.
#pragma once
#include <cstdint>

namespace flashstream::sink::cpu {

inline constexpr int kKeyBlock = 64;     // a multiple of every ISA's float lanes
inline constexpr int kMaxRows = 128;     // rows (queries x group heads) per work item
inline constexpr int kMaxQueryTile = 32;
inline constexpr int kRopeTable = 2 * kMaxQueryTile;  // positions per rotary table

// Queries per work item for a GQA group of g heads.
inline int64_t query_tile(int64_t g) {
  const int64_t t = kMaxRows / g;
  return t < 1 ? 1 : (t > kMaxQueryTile ? kMaxQueryTile : t);
}
inline int64_t padded_dim(int64_t D) { return (D + 15) / 16 * 16; }

// Scratch floats one work item needs (the binding allocates them per thread, outside the ISA code).
inline int64_t attend_scratch_floats(int64_t D, int64_t g) {
  const int64_t Dp = padded_dim(D), rows = query_tile(g) * g, half = D / 2;
  return rows * Dp * 3 + rows * 2 + Dp * kKeyBlock * 2 + kKeyBlock * Dp + 4 * kKeyBlock + 2 * kRopeTable * half + Dp +
         /* 5 double arrays + alignment */ 10 * half + 32 +
         /* bf16 path: packed keys, values, queries */ Dp * kKeyBlock + rows * Dp;
}

}  // namespace flashstream::sink::cpu
