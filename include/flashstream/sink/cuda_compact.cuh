// Sink KV cache, CUDA compaction: one block per (stream, kv head). The kept rows move down in
// ordered tiles of R rows: the block reads a whole tile (k and v) into shared memory, syncs, then
// writes it. Tile t writes slots [tR, tR + R) and every later tile reads slots keep[j] >= j >=
// (t+1)R, so no read ever sees a slot already overwritten (compact.h). Rows move as 16-, 4- or
// 2-byte words. Torch-free launcher.
//
// The two phases of a tile are FS_HOST_DEVICE functions of one thread, so tests/cuda_emu runs
// them on the host for every thread of every block, in the kernel's order (all loads, then all
// stores), without a GPU. The kernel and launcher are nvcc-only.
//
// No host sync: indices are not validated here (the CPU binding does; see csrc/cuda). An index
// that is negative or beyond the page table is skipped, so nothing is read or written outside the
// pool; unsorted or duplicate indices give unspecified slot contents, never an out-of-bounds access.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "flashstream/sink/compact.h"

namespace flashstream::sink::cuda {

inline constexpr int kCompactThreads = 256;
inline constexpr int64_t kCompactSmemBytes = 32 * 1024;  // k and v staging together

// Rows per tile for rows of row_bytes: as many as fit the staging buffer, 1..64.
FS_HOST_DEVICE FS_INLINE int64_t compact_tile_rows(int64_t row_bytes) {
  const int64_t r = kCompactSmemBytes / (2 * row_bytes);
  return r < 1 ? 1 : (r > 64 ? 64 : r);
}

// Phase 1 of the tile starting at kept index j0 (rows rows), for one thread of nthreads: copy its
// words of the source rows into the staging buffers ks, vs ([tile_rows, words] each).
template <typename Word>
FS_HOST_DEVICE FS_INLINE void compact_tile_load(const CompactArgs& a, int64_t b, int64_t h, int64_t j0, int64_t rows,
                                                Word* ks, Word* vs, int64_t thread, int64_t nthreads) {
  const int64_t words = a.D * a.elem_bytes / int64_t(sizeof(Word));
  const int64_t per_word = int64_t(sizeof(Word)) / a.elem_bytes;
  const Word* kp = static_cast<const Word*>(a.k_pool);
  const Word* vp = static_cast<const Word*>(a.v_pool);
  for (int64_t i = thread; i < rows * words; i += nthreads) {
    const int64_t r = i / words, w = i % words;
    const int64_t off = compact_slot_offset(a, b, h, keep_at(a, b, h, j0 + r));
    if (off < 0) continue;
    ks[i] = kp[off / per_word + w];
    vs[i] = vp[off / per_word + w];
  }
}

// Phase 2: write the staged rows to slots j0 .. j0 + rows (skipping rows already in place and
// indices the page table can't hold).
template <typename Word>
FS_HOST_DEVICE FS_INLINE void compact_tile_store(const CompactArgs& a, int64_t b, int64_t h, int64_t j0, int64_t rows,
                                                 const Word* ks, const Word* vs, int64_t thread, int64_t nthreads) {
  const int64_t words = a.D * a.elem_bytes / int64_t(sizeof(Word));
  const int64_t per_word = int64_t(sizeof(Word)) / a.elem_bytes;
  Word* kp = static_cast<Word*>(a.k_pool);
  Word* vp = static_cast<Word*>(a.v_pool);
  for (int64_t i = thread; i < rows * words; i += nthreads) {
    const int64_t r = i / words, w = i % words;
    const int64_t src = compact_slot_offset(a, b, h, keep_at(a, b, h, j0 + r));
    const int64_t dst = compact_slot_offset(a, b, h, j0 + r);
    if (src < 0 || dst < 0 || src == dst) continue;
    kp[dst / per_word + w] = ks[i];
    vp[dst / per_word + w] = vs[i];
  }
}

// The word a pool row moves in: the widest of 16, 4, 2 bytes dividing the row size. Rows start at
// multiples of the row size from a pool torch aligns to 16+ bytes, so such words are aligned.
enum class CompactWord : int { w16 = 16, w4 = 4, w2 = 2 };
FS_HOST_DEVICE FS_INLINE CompactWord compact_word(int64_t row_bytes) {
  return row_bytes % 16 == 0 ? CompactWord::w16 : (row_bytes % 4 == 0 ? CompactWord::w4 : CompactWord::w2);
}

#if defined(__CUDACC__)  // host compilers (tests/cuda_emu) see the phases only, and run them serially

template <typename Word>
__global__ void __launch_bounds__(kCompactThreads) compact_kernel(const CompactArgs a, int64_t tile_rows) {
  extern __shared__ __align__(16) unsigned char compact_smem[];
  const int64_t b = blockIdx.x / a.Hkv, h = blockIdx.x % a.Hkv;
  const int64_t words = a.D * a.elem_bytes / int64_t(sizeof(Word));
  Word* ks = reinterpret_cast<Word*>(compact_smem);
  Word* vs = ks + tile_rows * words;
  for (int64_t j0 = 0; j0 < a.n; j0 += tile_rows) {
    const int64_t rows = a.n - j0 < tile_rows ? a.n - j0 : tile_rows;
    compact_tile_load<Word>(a, b, h, j0, rows, ks, vs, threadIdx.x, kCompactThreads);
    __syncthreads();
    compact_tile_store<Word>(a, b, h, j0, rows, ks, vs, threadIdx.x, kCompactThreads);
    __syncthreads();
  }
  // lengths is read by no block, so the first head's block sets it.
  if (h == 0 && threadIdx.x == 0) a.lengths[b] = a.n;
}

template <typename Word>
cudaError_t launch_compact_words(const CompactArgs& a, cudaStream_t stream) {
  const int64_t row_bytes = a.D * a.elem_bytes, tile = compact_tile_rows(row_bytes);
  const size_t smem = size_t(2 * tile * row_bytes);
  compact_kernel<Word><<<unsigned(a.B * a.Hkv), kCompactThreads, smem, stream>>>(a, tile);
  return cudaGetLastError();
}

inline cudaError_t launch_compact(const CompactArgs& a, cudaStream_t stream) {
  if (a.B == 0 || a.Hkv == 0) return cudaSuccess;
  switch (compact_word(a.D * a.elem_bytes)) {
    case CompactWord::w16: return launch_compact_words<uint4>(a, stream);
    case CompactWord::w4: return launch_compact_words<uint32_t>(a, stream);
    default: return launch_compact_words<uint16_t>(a, stream);
  }
}

#endif  // __CUDACC__

}  // namespace flashstream::sink::cuda
