// Depthwise causal conv1d CPU kernels (params.h has the math). Two layouts, both vectorised:
//  * time-major (x[b, c, :] unit-stride): one (b, c) row at a time, its input window (state tail
//    ++ x) converted to fp32 in a scratch tile, SIMD lanes over consecutive outputs;
//  * channel-last (x[b, :, t] unit-stride): blocks of channels, SIMD lanes over channels, the
//    block's state transposed once into scratch so every tap is a vector load.
// Ragged tails (time or channels) run through zero-padded scratch, so every output takes the same
// vector arithmetic wherever it sits in a chunk. Host only; the binding hands each task its scratch.
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/common/simd.h"
#include "flashstream/conv/params.h"

namespace flashstream::conv::cpu {
inline namespace FLASHSTREAM_ISA {  // see simd.h: per-ISA symbols

inline constexpr int kTile = 256;                  // outputs per time-major tile (multiple of lanes)
inline constexpr int kBlockC = 2 * simd::kLanes;   // channels per channel-last task

FS_INLINE simd::vf silu(simd::vf v) { return v / (1.0f + simd::exp(-v)); }

// fp32 scratch floats one task needs, for either layout.
inline int64_t scratch_floats(const CausalConv1dParams& p) {
  const int64_t time_major = kTile + p.state_len + simd::kLanes;
  const int64_t channel_last = (p.state_len + 4) * kBlockC;
  return time_major > channel_last ? time_major : channel_last;
}

template <typename T>
FS_INLINE void copy_raw(T* dst, const T* src) { std::memcpy(static_cast<void*>(dst), src, sizeof(T)); }

// New state row = last L inputs of (state ++ x) along the row; reads run ahead of writes, so the
// in-place shift is safe in increasing order.
template <typename T>
inline void save_state_row(const CausalConv1dParams& p, T* srow, const T* xrow, int64_t x_st) {
  const int64_t L = p.state_len, Tn = p.seqlen;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t e = Tn + l;
    if (e < L) copy_raw(srow + l * p.s_sl, srow + e * p.s_sl);
    else copy_raw(srow + l * p.s_sl, xrow + (e - L) * x_st);
  }
}

// Rows [r0, r1) of B*C, x and y unit-stride along time.
template <typename T>
void time_major(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                const int32_t* indices, T* y, float* scratch, int64_t r0, int64_t r1) {
  const int W = p.width, dil = p.dilation;
  const int64_t L = p.state_len, Tn = p.seqlen;
  constexpr int V = simd::kLanes;
  alignas(64) float wf[kMaxWidth];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.channels, c = r % p.channels;
    for (int k = 0; k < W; ++k) wf[k] = to_float(w[c * W + k]);
    const float bf = bias != nullptr ? to_float(bias[c]) : 0.0f;
    const int64_t slot = state_slot(p, state, indices, b);
    T* srow = slot >= 0 ? state + slot * p.s_sb + c * p.s_sc : nullptr;
    const T* xrow = x + b * p.x_sb + c * p.x_sc;
    T* yrow = y + b * p.y_sb + c * p.y_sc;
    for (int64_t t0 = 0; t0 < Tn; t0 += kTile) {
      const int64_t n = Tn - t0 < kTile ? Tn - t0 : kTile;
      const int64_t nv = (n + V - 1) / V * V;
      // scratch[j] = in(t0 - L + j) for j in [0, nv + L)
      const int64_t span = nv + L;
      int64_t j = 0;
      for (; j < span && t0 - L + j < 0; ++j) scratch[j] = srow != nullptr ? to_float(srow[(t0 + j) * p.s_sl]) : 0.0f;
      const int64_t xend = span < Tn - t0 + L ? span : Tn - t0 + L;  // first j past x's end
      for (; j + V <= xend; j += V) simd::store(scratch + j, simd::load(xrow + (t0 - L + j)));
      for (; j < xend; ++j) scratch[j] = to_float(xrow[t0 - L + j]);
      for (; j < span; ++j) scratch[j] = 0.0f;
      for (int64_t i = 0; i < nv; i += V) {
        simd::vf acc = simd::splat(bf);
        for (int k = 0; k < W; ++k) acc += simd::splat(wf[k]) * simd::load(scratch + i + int64_t(k) * dil);
        if (p.silu) acc = silu(acc);
        if (i + V <= n) {
          simd::store(yrow + t0 + i, acc);
        } else {
          alignas(64) T out[V];
          simd::store(out, acc);
          for (int64_t q = 0; q < n - i; ++q) copy_raw(yrow + t0 + i + q, out + q);
        }
      }
    }
    if (srow != nullptr) save_state_row(p, srow, xrow, 1);
  }
}

// Loads channels [c0, c0 + nc) of a unit-stride channel vector as 2 float vectors (zeros past nc).
template <typename T>
FS_INLINE void load_block(const T* src, int nc, simd::vf (&v)[2]) {
  constexpr int V = simd::kLanes;
  if (nc == kBlockC) {
    v[0] = simd::load(src);
    v[1] = simd::load(src + V);
    return;
  }
  alignas(64) float tmp[kBlockC];
  for (int q = 0; q < kBlockC; ++q) tmp[q] = q < nc ? to_float(src[q]) : 0.0f;
  v[0] = simd::load(tmp);
  v[1] = simd::load(tmp + V);
}

template <typename T>
FS_INLINE void store_block(T* dst, int nc, const simd::vf (&v)[2]) {
  constexpr int V = simd::kLanes;
  if (nc == kBlockC) {
    simd::store(dst, v[0]);
    simd::store(dst + V, v[1]);
    return;
  }
  alignas(64) T tmp[kBlockC];
  simd::store(tmp, v[0]);
  simd::store(tmp + V, v[1]);
  for (int q = 0; q < nc; ++q) copy_raw(dst + q, tmp + q);
}

// Tasks [k0, k1) of B * ceil(C / kBlockC), x and y unit-stride along channels.
template <typename T>
void channel_last(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                  const int32_t* indices, T* y, float* scratch, int64_t k0, int64_t k1) {
  const int W = p.width, dil = p.dilation;
  const int64_t L = p.state_len, Tn = p.seqlen;
  constexpr int V = simd::kLanes;
  const int64_t blocks = (p.channels + kBlockC - 1) / kBlockC;
  alignas(64) float wf[kMaxWidth * kBlockC];
  alignas(64) float bf[kBlockC];
  for (int64_t task = k0; task < k1; ++task) {
    const int64_t b = task / blocks, c0 = (task % blocks) * kBlockC;
    const int nc = int(p.channels - c0 < kBlockC ? p.channels - c0 : kBlockC);
    for (int k = 0; k < W; ++k)
      for (int q = 0; q < kBlockC; ++q) wf[k * kBlockC + q] = q < nc ? to_float(w[(c0 + q) * W + k]) : 0.0f;
    for (int q = 0; q < kBlockC; ++q) bf[q] = (q < nc && bias != nullptr) ? to_float(bias[c0 + q]) : 0.0f;
    const int64_t slot = state_slot(p, state, indices, b);
    T* sblk = slot >= 0 ? state + slot * p.s_sb + c0 * p.s_sc : nullptr;
    // scratch[l * kBlockC + q] = state[slot, c0 + q, l]: the block's history as channel vectors.
    for (int64_t l = 0; l < L; ++l)
      for (int q = 0; q < kBlockC; ++q)
        scratch[l * kBlockC + q] = (sblk != nullptr && q < nc) ? to_float(sblk[q * p.s_sc + l * p.s_sl]) : 0.0f;
    const T* xb = x + b * p.x_sb + c0;
    T* yb = y + b * p.y_sb + c0;
    for (int64_t t = 0; t < Tn; ++t) {
      simd::vf acc[2] = {simd::load(bf), simd::load(bf + V)};
      for (int k = 0; k < W; ++k) {
        const int64_t g = t + int64_t(k) * dil - L;
        simd::vf in[2];
        if (g < 0) {
          in[0] = simd::load(scratch + (L + g) * kBlockC);
          in[1] = simd::load(scratch + (L + g) * kBlockC + V);
        } else {
          load_block(xb + g * p.x_st, nc, in);
        }
        acc[0] += simd::load(wf + k * kBlockC) * in[0];
        acc[1] += simd::load(wf + k * kBlockC + V) * in[1];
      }
      if (p.silu) {
        acc[0] = silu(acc[0]);
        acc[1] = silu(acc[1]);
      }
      store_block(yb + t * p.y_st, nc, acc);
    }
    if (sblk == nullptr) continue;
    // New state: the last L of (old state ++ x); old state values come back from scratch (the
    // fp32 round trip of a 16-bit value is exact).
    for (int64_t l = 0; l < L; ++l) {
      const int64_t e = Tn + l;
      for (int q = 0; q < nc; ++q) {
        T* dst = sblk + q * p.s_sc + l * p.s_sl;
        if (e < L) *dst = from_float<T>(scratch[e * kBlockC + q]);
        else copy_raw(dst, xb + (e - L) * p.x_st + q);
      }
    }
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::conv::cpu
