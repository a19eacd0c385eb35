// Mixture-of-depths routing: the scalar math that the CPU and CUDA route kernels share. Torch-free;
// host and device.
//
// Within a group of n routable tokens, the k = keep_count(capacity, n) tokens with the highest
// scores are kept, ties broken by the lower index. Both rules are folded into one unique 64-bit key
// per token, so "top k" is a strict order and the selection is a single threshold:
//   key = order(score) << 32 | (2^32 - 1 - t)        (higher score first, then lower t)
// order() maps a float to a uint32 that sorts like the float, with -0 == +0 and NaN below -inf.
#pragma once
#include <cmath>
#include <cstdint>

#include "flashstream/common/dtype.h"
#include "flashstream/common/macros.h"

namespace flashstream::mod {

// Tokens per row are indexed in 32 bits inside the keys.
inline constexpr int64_t kMaxTokens = (int64_t(1) << 31) - 1;

// ceil(capacity * n), except that a product within 1e-9 * n above an integer counts as that integer:
// 0.55 * 100 is 55.00000000000001 in binary floating point and must keep 55 tokens, not 56. Spelled
// with explicit roundings so that nvcc cannot contract it into an fma and disagree with the host
// (and with Python's math.ceil(capacity * n - 1e-9 * n), which the fake kernel uses).
FS_HOST_DEVICE FS_INLINE int64_t keep_count(double capacity, int64_t n) {
#if defined(__CUDA_ARCH__)
  const double x = __dsub_rn(__dmul_rn(capacity, double(n)), __dmul_rn(1e-9, double(n)));
#else
  const double x = capacity * double(n) - 1e-9 * double(n);
#endif
  const double k = ceil(x);
  if (!(k > 0.0)) return 0;
  return k >= double(n) ? n : int64_t(k);
}

FS_HOST_DEVICE FS_INLINE uint32_t score_order(float s) {
  if (s != s) return 0u;         // NaN: below everything
  uint32_t u = float_bits(s + 0.0f);  // -0 + 0 = +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

FS_HOST_DEVICE FS_INLINE uint64_t token_key(float score, int64_t t) {
  return (uint64_t(score_order(score)) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(t));
}

FS_HOST_DEVICE FS_INLINE float sigmoid(float s) { return 1.0f / (1.0f + expf(-s)); }

}  // namespace flashstream::mod
