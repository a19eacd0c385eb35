// MoD gather / scatter CPU kernels: whole D-wide rows, moved with memcpy or the SIMD layer, in fp32
// math with one rounding to the storage type. A row's ragged tail runs through a zero-padded copy
// so every element takes the same vector code. Torch-free; host only.
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/common/simd.h"

namespace flashstream::mod::cpu {
inline namespace FLASHSTREAM_ISA {  // see simd.h: per-ISA symbols

using simd::kLanes;

// The update of one kept element: x + w * delta, or, when the block returned its output y = x + f
// instead of the delta f (kOutput), x + w * (y - x).
template <bool kOutput>
FS_INLINE simd::vf residual(simd::vf x, simd::vf d, simd::vf w) { return kOutput ? x + w * (d - x) : x + w * d; }

// out = residual(x, delta, w) over one row of n elements (out may alias x).
template <bool kOutput, typename T>
FS_INLINE void axpy_row(const T* x, const T* delta, float w, T* out, int64_t n) {
  const simd::vf wv = simd::splat(w);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    simd::store(out + i, residual<kOutput>(simd::load(x + i), simd::load(delta + i), wv));
  if (i < n) {
    alignas(64) T px[kLanes] = {}, pd[kLanes] = {}, po[kLanes];
    std::memcpy(px, x + i, (n - i) * sizeof(T));
    std::memcpy(pd, delta + i, (n - i) * sizeof(T));
    simd::store(po, residual<kOutput>(simd::load(px), simd::load(pd), wv));
    std::memcpy(out + i, po, (n - i) * sizeof(T));
  }
}

// Rows [begin, end) of the flat [B * K] output: out[r] = x[b, idx[r]], zeros for -1 (or any index
// outside [0, T), which the binding has rejected unless it was asked not to validate).
template <typename T>
void gather(const T* x, const int64_t* idx, T* out, int64_t K, int64_t T_, int64_t D, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t i = idx[r];
    T* dst = out + r * D;
    if (i >= 0 && i < T_) std::memcpy(dst, x + ((r / K) * T_ + i) * D, D * sizeof(T));
    else std::memset(static_cast<void*>(dst), 0, D * sizeof(T));
  }
}

// As gather, and also normed[r] = x_sel[r] * rsqrt(mean(x_sel[r]^2) + eps) * weight.
template <typename T>
void gather_rmsnorm(const T* x, const int64_t* idx, const T* weight, float eps, T* out, T* normed, int64_t K,
                    int64_t T_, int64_t D, int64_t begin, int64_t end) {
  alignas(64) T pad[kLanes], pw[kLanes], po[kLanes];
  for (int64_t r = begin; r < end; ++r) {
    const int64_t i = idx[r];
    T* dst = out + r * D;
    T* nrm = normed + r * D;
    if (!(i >= 0 && i < T_)) {
      std::memset(static_cast<void*>(dst), 0, D * sizeof(T));
      std::memset(static_cast<void*>(nrm), 0, D * sizeof(T));
      continue;
    }
    const T* src = x + ((r / K) * T_ + i) * D;
    std::memcpy(dst, src, D * sizeof(T));
    simd::vf acc = simd::splat(0.0f);
    int64_t j = 0;
    for (; j + kLanes <= D; j += kLanes) { const simd::vf v = simd::load(src + j); acc += v * v; }
    const int64_t tail = D - j;
    if (tail) {
      std::memset(static_cast<void*>(pad), 0, sizeof pad);
      std::memcpy(pad, src + j, tail * sizeof(T));
      const simd::vf v = simd::load(pad);
      acc += v * v;
    }
    float ss = 0.0f;
    for (int l = 0; l < kLanes; ++l) ss += acc[l];
    const simd::vf scale = simd::splat(1.0f / __builtin_sqrtf(ss / float(D) + eps));
    for (j = 0; j + kLanes <= D; j += kLanes)
      simd::store(nrm + j, simd::load(src + j) * scale * simd::load(weight + j));
    if (tail) {
      std::memset(static_cast<void*>(pw), 0, sizeof pw);
      std::memcpy(pw, weight + j, tail * sizeof(T));
      simd::store(po, simd::load(pad) * scale * simd::load(pw));
      std::memcpy(nrm + j, po, tail * sizeof(T));
    }
  }
}

// Kept rows [begin, end) of the flat [B * K] indices: out[b, idx] = x[b, idx] + w * delta[r] (w = 1
// without weights), or x + w * (delta[r] - x) with kOutput. `out` already holds x (or is x, for the
// in-place ops); padding is skipped.
template <bool kOutput, typename T>
void scatter(const T* x, const T* delta, const int64_t* idx, const T* weights, T* out, int64_t K, int64_t T_,
             int64_t D, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t i = idx[r];
    if (!(i >= 0 && i < T_)) continue;
    const int64_t row = (r / K) * T_ + i;
    const float w = weights ? to_float(weights[r]) : 1.0f;
    axpy_row<kOutput>(x + row * D, delta + r * D, w, out + row * D, D);
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::mod::cpu
