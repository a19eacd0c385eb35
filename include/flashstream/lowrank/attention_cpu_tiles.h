// Low-rank attention on CPU: block sizes and scratch sizing, shared by the ISA kernels and the
// binding (which allocates the scratch outside the per-ISA code). Torch-free; no SIMD.
#pragma once
#include <cstdint>

#include "flashstream/lowrank/attention_params.h"

namespace flashstream::lowrank::cpu {

inline constexpr int kKeyBlock = 64;  // keys per block: a multiple of every ISA's float lanes

// Scratch floats one attention work item needs (the binding allocates it per thread).
inline int64_t attend_scratch_floats(const AttnArgs& a) {
  const int64_t Dhp = pad_to(a.Dh, kRankPad);
  return (a.r[0] + a.r[1] + a.r[2]) * Dhp + 3 * Dhp + 2 * a.tile * Dhp + 2 * a.tile + 3 * kKeyBlock * Dhp +
         4 * kKeyBlock + kKeyBlock + 64;
}
// Rows of x converted at a time by the projection, and the scratch floats it needs.
inline constexpr int64_t kProjectRows = 16;
inline int64_t project_scratch_floats(const AttnArgs& a) { return kProjectRows * a.Din; }

}  // namespace flashstream::lowrank::cpu
