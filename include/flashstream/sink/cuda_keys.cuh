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

// cos and sin of pos * inv_freq for the tensor-core kernel: the angle in fp64 as rope_pair's,
// reduced to [-pi, pi] in fp64, then sin / cos in fp32 of the reduced angle (the SFU's __sincosf
// on the GPU: absolute error < 4e-7 on [-pi, pi]). The reduction is exact to ~1e-9 at angles of
// 1e7, so the result does not drift with stream length; the error is far below the bf16 / fp16
// rounding of the rotated values that follows, and no fp64 sincos runs per pair.
FS_DEVICE FS_INLINE void rope_cos_sin(double inv_freq, int64_t pos, float& c, float& s) {
  const double ang = double(pos) * inv_freq;
  const double turns = rint(ang * 0.15915494309189535);  // 1 / (2 pi)
  const float r = float(fma(-turns, 6.283185307179586, ang));
#if defined(__CUDA_ARCH__)
  __sincosf(r, &s, &c);
#else
  sincosf(r, &s, &c);
#endif
}

FS_DEVICE FS_INLINE void rotate_pair(float c, float s, float& a, float& b) {
  const float x = a, y = b;
  a = x * c - y * s;
  b = y * c + x * s;
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
