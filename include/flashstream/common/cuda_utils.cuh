// Small CUDA helpers shared by the kernels: vectorised row loads/stores and launch sizing.
#pragma once
#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "flashstream/common/macros.h"

namespace flashstream::cuda {

template <int Bytes> struct Chunk;
template <> struct Chunk<16> { using type = uint4; };
template <> struct Chunk<8> { using type = uint2; };
template <> struct Chunk<4> { using type = uint32_t; };
template <> struct Chunk<2> { using type = uint16_t; };

// The widest access (<= 16 bytes) that divides a row of `Bytes` bytes; rows are then aligned to
// it whenever the base pointer is 16-byte aligned (the launchers check).
template <int Bytes>
inline constexpr int kChunkBytes = Bytes % 16 == 0 ? 16 : Bytes % 8 == 0 ? 8 : Bytes % 4 == 0 ? 4 : 2;

template <typename T, int N>
FS_DEVICE FS_INLINE void load_row(const T* __restrict__ src, T (&dst)[N]) {
  constexpr int kBytes = N * int(sizeof(T));
  using C = typename Chunk<kChunkBytes<kBytes>>::type;
  C tmp[kBytes / sizeof(C)];
#pragma unroll
  for (int i = 0; i < int(kBytes / sizeof(C)); ++i) tmp[i] = reinterpret_cast<const C*>(src)[i];
  memcpy(dst, tmp, kBytes);
}

template <typename T, int N>
FS_DEVICE FS_INLINE void store_row(T* __restrict__ dst, const T (&src)[N]) {
  constexpr int kBytes = N * int(sizeof(T));
  using C = typename Chunk<kChunkBytes<kBytes>>::type;
  C tmp[kBytes / sizeof(C)];
  memcpy(tmp, src, kBytes);
#pragma unroll
  for (int i = 0; i < int(kBytes / sizeof(C)); ++i) reinterpret_cast<C*>(dst)[i] = tmp[i];
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Blocks for a grid-stride loop over n items: enough to fill any current GPU, never more than
// the items need.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return unsigned(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

}  // namespace flashstream::cuda
