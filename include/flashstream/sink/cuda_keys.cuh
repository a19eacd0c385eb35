// Sink KV cache, CUDA: where a key row lives (new tokens or the paged pool) and the fp64-angle
// rotary of one feature pair; shared by the SIMT kernel (cuda.cuh) and the tensor-core kernel
// (cuda_tc.cuh). No launches, so host emulations (tests/cuda_emu) can include it.
#pragma once
#include <cmath>
#include <cstdint>

#include "flashstream/common/macros.h"
#include "flashstream/sink/args.h"

namespace flashstream::sink::cuda {

FS_DEVICE FS_INLINE void rope_pair(double inv_freq, int64_t pos, float& a, float& b) {
  double s, c;
  sincos(double(pos) * inv_freq, &s, &c);  // fp64: exact enough at any stream length
  const float cf = float(c), sf = float(s);
  const float x = a, y = b;
  a = x * cf - y * sf;
  b = y * cf + x * sf;
}

template <typename T>
FS_DEVICE FS_INLINE const T* key_ptr(const AttnArgs& a, const T* base_new, const T* pool, int64_t b, int64_t h,
                                     int64_t n, bool full, int64_t p) {
  if (p >= n) return base_new + ((b * a.T + (p - n)) * a.Hkv + h) * a.D;
  const int64_t off = slot_offset(a.page_table, a.pages_per_head, a.page_size, a.pool_pages, a.D, b, h, a.Hkv,
                                  slot_of(a.g, p, full));
  return off < 0 ? nullptr : pool + off;
}

}  // namespace flashstream::sink::cuda
