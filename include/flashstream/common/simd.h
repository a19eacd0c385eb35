// A small SIMD layer for the CPU kernels, written with GCC/Clang vector extensions so that one
// source compiles to SSE2/NEON (baseline), AVX2 or AVX-512 depending on the flags of the
// translation unit that includes it (csrc/cpu/isa/*.cpp are built once per instruction set and
// picked at run time). Host-only; never included by CUDA code.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "flashstream/common/dtype.h"

// Every translation unit including this header is compiled for one instruction set, named by
// FLASHSTREAM_ISA; the inline namespace gives each its own symbols, so the linker can never merge
// an AVX-512 copy of an inline function into code that runs on a machine without AVX-512. For the
// same reason the CPU kernels avoid std:: algorithm templates.
#ifndef FLASHSTREAM_ISA
#error "simd.h is compiled once per instruction set: define FLASHSTREAM_ISA (see CMakeLists.txt)"
#endif

namespace flashstream::simd {
inline namespace FLASHSTREAM_ISA {

#if defined(__AVX512F__)
inline constexpr int kBytes = 64;
#elif defined(__AVX2__)
inline constexpr int kBytes = 32;
#else
inline constexpr int kBytes = 16;
#endif
inline constexpr int kLanes = kBytes / 4;  // float lanes per vector

typedef float vf __attribute__((vector_size(kBytes)));
typedef int32_t vi __attribute__((vector_size(kBytes)));
typedef uint32_t vu __attribute__((vector_size(kBytes)));
typedef uint16_t vh __attribute__((vector_size(kBytes / 2)));  // kLanes x 16-bit

// Broadcasts (one vbroadcastss); `vf{} + x` would cost a dependent add, since 0 + x is not x for -0.
FS_INLINE vf splat(float x) {
  vf r;
  for (int i = 0; i < kLanes; ++i) r[i] = x;
  return r;
}
// One float from memory to every lane as a single vbroadcastss: inside unrolled loops GCC turns
// splat(*p) into a chain of masked broadcasts.
FS_INLINE vf broadcast(const float* p) {
#if defined(__AVX512F__)
  return (vf)_mm512_set1_ps(*p);
#elif defined(__AVX2__)
  return (vf)_mm256_broadcast_ss(p);
#else
  return splat(*p);
#endif
}
FS_INLINE vu splat_u(uint32_t x) {
  vu r;
  for (int i = 0; i < kLanes; ++i) r[i] = x;
  return r;
}
FS_INLINE vu as_u(vf x) { vu r; std::memcpy(&r, &x, sizeof r); return r; }
FS_INLINE vf as_f(vu x) { vf r; std::memcpy(&r, &x, sizeof r); return r; }
FS_INLINE vf as_f(vi x) { vf r; std::memcpy(&r, &x, sizeof r); return r; }
FS_INLINE vf select(vi mask, vf a, vf b) { return mask ? a : b; }  // mask lanes are 0 or -1

// ---- loads and stores with conversion to/from float lanes ---------------------------------------
FS_INLINE vf load(const float* p) { vf r; std::memcpy(&r, p, sizeof r); return r; }
FS_INLINE vf load(const bf16_t* p) {
  vh h; std::memcpy(&h, p, sizeof h);
  return as_f(__builtin_convertvector(h, vu) << 16);
}
FS_INLINE vf load(const f16_t* p) {
  vh h16; std::memcpy(&h16, p, sizeof h16);
  const vu h = __builtin_convertvector(h16, vu);
  const vu sign = (h & 0x8000u) << 16;
  const vu exp = (h >> 10) & 0x1Fu;
  const vu mant = h & 0x3FFu;
  const vu normal = ((exp + 112u) << 23) | (mant << 13);
  const vu special = 0x7F800000u | (mant << 13);
  const vu sub = as_u(__builtin_convertvector(mant, vf) * 5.9604644775390625e-8f);  // mant * 2^-24
  const vu mag = exp == 0u ? sub : (exp == 31u ? special : normal);
  return as_f(sign | mag);
}

// The 16-bit patterns of x rounded to nearest even (NaN stays a quiet NaN), in the low halves of
// 32-bit lanes: what store() writes, for callers that store them their own way.
FS_INLINE vu bf16_bits(vf x) {
  const vu u = as_u(x);
  const vu nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return nan ? ((u >> 16) | 0x40u) : rounded;
}
FS_INLINE vu f16_bits(vf x) {
  const vu u = as_u(x);
  const vu sign = (u >> 16) & 0x8000u;
  const vu a = u & 0x7FFFFFFFu;
  const vu normal = (a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  const vu sub = as_u(as_f(a) + 0.5f) - 0x3F000000u;
  vu h = a >= 0x38800000u ? normal : sub;
  h = a >= 0x477FF000u ? splat_u(0x7C00u) : h;
  h = a > 0x7F800000u ? splat_u(0x7E00u) : h;
  return sign | h;
}

FS_INLINE void store(float* p, vf x) { std::memcpy(p, &x, sizeof x); }
FS_INLINE void store(bf16_t* p, vf x) {
  const vh h = __builtin_convertvector(bf16_bits(x), vh);
  std::memcpy(p, &h, sizeof h);
}
FS_INLINE void store(f16_t* p, vf x) {
  const vh h = __builtin_convertvector(f16_bits(x), vh);
  std::memcpy(p, &h, sizeof h);
}

// ---- tile transpose -----------------------------------------------------------------------------
// Stage s of a kLanes x kLanes transpose on rows a (index i) and b (index i + s, (i & s) == 0):
// swaps the off-diagonal s x s sub-blocks; after the stages s = 1, 2, 4, ... the tile is
// transposed. Each output is one two-source permute (vpermt2ps on AVX-512).
template <int s>
FS_INLINE void transpose_stage(vf& a, vf& b) {
  vi lo, hi;
  for (int l = 0; l < kLanes; ++l) {
    lo[l] = (l & s) ? kLanes + l - s : l;
    hi[l] = (l & s) ? kLanes + l : l + s;
  }
  const vf na = __builtin_shuffle(a, b, lo), nb = __builtin_shuffle(a, b, hi);
  a = na;
  b = nb;
}
template <int s>
FS_INLINE void transpose_stages(vf (&r)[kLanes]) {
  if constexpr (s < kLanes) {
#pragma GCC unroll 16
    for (int i = 0; i < kLanes; ++i)
      if ((i & s) == 0) transpose_stage<s>(r[i], r[i + s]);
    transpose_stages<2 * s>(r);
  }
}
// dst[c * ds + r] = src[r * ss + c] for a kLanes x kLanes tile of floats.
FS_INLINE void transpose_tile(const float* src, int64_t ss, float* dst, int64_t ds) {
  vf r[kLanes];
#pragma GCC unroll 16
  for (int i = 0; i < kLanes; ++i) r[i] = load(src + i * ss);
  transpose_stages<1>(r);
#pragma GCC unroll 16
  for (int i = 0; i < kLanes; ++i) store(dst + i * ds, r[i]);
}

// ---- math ---------------------------------------------------------------------------------------
FS_INLINE vf abs(vf x) { return as_f(as_u(x) & 0x7FFFFFFFu); }
FS_INLINE vf copysign(vf mag, vf sgn) { return as_f((as_u(mag) & 0x7FFFFFFFu) | (as_u(sgn) & 0x80000000u)); }
// NaN in `a` propagates (every comparison with NaN is false).
FS_INLINE vf min(vf a, vf b) { return a > b ? b : a; }
FS_INLINE vf max(vf a, vf b) { return a < b ? b : a; }
// Horizontal max / sum as a halving tree (log2 kLanes dependent steps, not kLanes: a lane-order
// loop is one long chain of scalar operations). The order is fixed per ISA, so results do not
// depend on the caller.
FS_INLINE float hmax(vf x) {
#if defined(__AVX512F__)
  return _mm512_reduce_max_ps((__m512)x);
#elif defined(__AVX2__)
  __m128 h = _mm_max_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
#else
  float m = x[0];
  for (int i = 1; i < kLanes; ++i) m = x[i] > m ? x[i] : m;
  return m;
#endif
}
FS_INLINE float hsum(vf x) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)x);
#elif defined(__AVX2__)
  __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
#else
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += x[i];
  return s;
#endif
}

// Fused multiply-add where the ISA has one (kHasFma); elsewhere a * b + c with two roundings, so
// code that needs the fused result for exactness checks kHasFma first.
#if defined(__AVX512F__)
inline constexpr bool kHasFma = true;
FS_INLINE vf fma(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr bool kHasFma = true;
FS_INLINE vf fma(vf a, vf b, vf c) { return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
inline constexpr bool kHasFma = false;
FS_INLINE vf fma(vf a, vf b, vf c) { return a * b + c; }
#endif

// 1 / x to ~1 ulp without a divide: hardware estimate (14 bits on AVX-512, 12 on AVX2) refined
// by Newton steps; a true division on the baseline ISA.
FS_INLINE vf reciprocal(vf x) {
#if defined(__AVX512F__)
  vf r = (vf)_mm512_rcp14_ps((__m512)x);
  return r * fma(-x, r, splat(2.0f));
#elif defined(__AVX2__) && defined(__FMA__)
  vf r = (vf)_mm256_rcp_ps((__m256)x);
  r = r * fma(-x, r, splat(2.0f));
  return r * fma(-x, r, splat(2.0f));
#else
  return 1.0f / x;
#endif
}

// Round half to even (as torch.round / rintf); NaN stays NaN. One vroundscaleps / vroundps; the
// portable form adds 2^23 so that no fraction bits are left and the FPU's own round-to-nearest-even
// does the rounding (exact for |x| < 2^23, and larger floats are integers already).
FS_INLINE vf round_even(vf x) {
#if defined(__AVX512F__)
  return (vf)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#elif defined(__AVX2__)
  return (vf)_mm256_round_ps((__m256)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vf big = splat(8388608.0f);
  const vf a = abs(x);
  const vf r = (a + big) - big;
  return copysign(a < big ? r : a, x);
#endif
}

// e^x for x in [-87, 88]; ~1 ulp: Cody-Waite reduction by ln2, then a degree-7 Taylor polynomial
// on |r| <= ln2/2 (truncation 6e-9 relative) and a 2^n exponent insert.
FS_INLINE vf exp(vf x) {
  x = min(max(x, splat(-87.0f)), splat(88.0f));
  const vf n = round_even(x * 1.44269504088896341f);
  const vf r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vf p = splat(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * as_f(e);
}

// tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1)). Absolute error ~2e-7 over the whole range (what
// FSQ's rounding needs); saturates to +-1 exactly for |x| > 9.
FS_INLINE vf tanh(vf x) {
  const vf e = exp(abs(x) * 2.0f);
  return copysign(1.0f - 2.0f * reciprocal(e + 1.0f), x);
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::simd
