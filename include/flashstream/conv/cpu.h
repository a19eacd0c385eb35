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
inline constexpr int kBlockV = 4;                  // channel vectors per channel-last task:
inline constexpr int kBlockC = kBlockV * simd::kLanes;  // independent add chains, one per vector

FS_INLINE simd::vf silu(simd::vf v) { return v / (1.0f + simd::exp(-v)); }

// Broadcast as one vbroadcastss: x * 1 folds away (exact), where simd::splat's 0 + x must stay
// (it turns -0 into +0), costing an extra dependent add per tap.
FS_INLINE simd::vf bcast(float x) { return (simd::vf{} + 1.0f) * x; }

// One time-major window: a tile's outputs rounded up to lanes, plus the state length.
inline int64_t window_floats(const CausalConv1dParams& p) { return kTile + p.state_len + simd::kLanes; }

// fp32 scratch floats one task needs, for either layout.
inline int64_t scratch_floats(const CausalConv1dParams& p) {
  const int64_t time_major = 2 * window_floats(p);
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
  if (p.s_sl == 1 && x_st == 1 && L > 16) {  // long contiguous rows: one shift and one copy
    const int64_t keep = Tn < L ? L - Tn : 0;
    if (keep > 0) std::memmove(static_cast<void*>(srow), srow + Tn, keep * sizeof(T));
    std::memcpy(static_cast<void*>(srow + keep), xrow + (Tn - (L - keep)), (L - keep) * sizeof(T));
    return;
  }
  for (int64_t l = 0; l < L; ++l) {
    const int64_t e = Tn + l;
    if (e < L) copy_raw(srow + l * p.s_sl, srow + e * p.s_sl);
    else copy_raw(srow + l * p.s_sl, xrow + (e - L) * x_st);
  }
}

template <typename T>
struct Row {
  T* srow;        // state row, or null (no state / padding slot)
  const T* xrow;  // x[b, c, :]
  T* yrow;        // y[b, c, :]
};

template <typename T>
FS_INLINE Row<T> row_at(const CausalConv1dParams& p, const T* x, T* state, const int32_t* indices, T* y,
                        int64_t b, int64_t c) {
  const int64_t slot = state_slot(p, state, indices, b);
  return {slot >= 0 ? state + slot * p.s_sb + c * p.s_sc : nullptr, x + b * p.x_sb + c * p.x_sc,
          y + b * p.y_sb + c * p.y_sc};
}

// win[j] = in(t0 - L + j) for j in [0, nv + L), nv = the tile's outputs rounded up to lanes.
template <typename T>
inline void fill_window(const CausalConv1dParams& p, const Row<T>& row, int64_t t0, float* win) {
  constexpr int V = simd::kLanes;
  const int64_t L = p.state_len, Tn = p.seqlen;
  const int64_t n = Tn - t0 < kTile ? Tn - t0 : kTile;
  const int64_t span = (n + V - 1) / V * V + L;
  const int64_t from_state = L - t0 > 0 ? (L - t0 < span ? L - t0 : span) : 0;
  int64_t j = 0;
  if (row.srow == nullptr) {
    for (; j < from_state; ++j) win[j] = 0.0f;
  } else if (p.s_sl == 1) {
    for (; j + V <= from_state; j += V) simd::store(win + j, simd::load(row.srow + t0 + j));
  }
  for (; j < from_state; ++j) win[j] = to_float(row.srow[(t0 + j) * p.s_sl]);
  const int64_t xend = span < Tn - t0 + L ? span : Tn - t0 + L;  // first j past x's end
  for (; j + V <= xend; j += V) simd::store(win + j, simd::load(row.xrow + (t0 - L + j)));
  for (; j < xend; ++j) win[j] = to_float(row.xrow[t0 - L + j]);
  for (; j < span; ++j) win[j] = 0.0f;
}

template <typename T>
inline void compute_tile(const CausalConv1dParams& p, const float* wf, float bf, const float* win, T* yrow,
                         int64_t t0) {
  constexpr int V = simd::kLanes;
  const int W = p.width, dil = p.dilation;
  const int64_t n = p.seqlen - t0 < kTile ? p.seqlen - t0 : kTile;
  for (int64_t i = 0; i < n; i += V) {
    // Four partial sums over taps k = 0, 1, 2, 3 (mod 4) break the add latency chain; they
    // combine in one fixed order, the same for every output.
    simd::vf a[4] = {simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f)};
    const float* in = win + i;
    int k = 0;
    for (; k + 4 <= W; k += 4) {
      a[0] += bcast(wf[k]) * simd::load(in + int64_t(k) * dil);
      a[1] += bcast(wf[k + 1]) * simd::load(in + int64_t(k + 1) * dil);
      a[2] += bcast(wf[k + 2]) * simd::load(in + int64_t(k + 2) * dil);
      a[3] += bcast(wf[k + 3]) * simd::load(in + int64_t(k + 3) * dil);
    }
    // the last W % 4 taps, with constant indices so the partial sums stay in registers
    if (k < W) a[0] += bcast(wf[k]) * simd::load(in + int64_t(k) * dil);
    if (k + 1 < W) a[1] += bcast(wf[k + 1]) * simd::load(in + int64_t(k + 1) * dil);
    if (k + 2 < W) a[2] += bcast(wf[k + 2]) * simd::load(in + int64_t(k + 2) * dil);
    simd::vf acc = bcast(bf) + ((a[0] + a[1]) + (a[2] + a[3]));
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

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::conv::cpu

#include "flashstream/conv/cpu_short.h"  // the AVX-512 register path for short rows

namespace flashstream::conv::cpu {
inline namespace FLASHSTREAM_ISA {

// Rows [r0, r1) of B*C, x and y unit-stride along time, in (row, tile) items. Software-pipelined:
// the window of the next item is filled before the current one is computed, so the window's
// stores have left the store buffer when the shifted vector loads read them (a load overlapping
// an in-flight store of another size stalls on store forwarding: 3x slower on short chunks).
template <typename T>
void time_major(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                const int32_t* indices, T* y, float* scratch, int64_t r0, int64_t r1) {
  const int64_t Tn = p.seqlen;
  if (Tn == 0) return;
#if defined(FS_CONV_HAS_SHORT_PATH)
  if (short_rows(p, state)) return short_rows_run(p, x, w, bias, state, indices, y, r0, r1);
#endif
  const int W = p.width;
  const int64_t tiles = (Tn + kTile - 1) / kTile;
  float* win[2] = {scratch, scratch + window_floats(p)};
  alignas(64) float wf[kMaxWidth];
  float bf = 0.0f;
  int64_t b = r0 / p.channels, c = r0 % p.channels, tile = 0;
  Row<T> cur = row_at(p, x, state, indices, y, b, c);
  fill_window(p, cur, 0, win[0]);
  for (int64_t r = r0, parity = 0; r < r1; parity ^= 1) {
    int64_t nr = r, nb = b, nc = c, ntile = tile + 1;
    if (ntile == tiles) {
      ntile = 0;
      ++nr;
      if (++nc == p.channels) nc = 0, ++nb;
    }
    const Row<T> next = nr < r1 ? row_at(p, x, state, indices, y, nb, nc) : cur;
    if (nr < r1) fill_window(p, next, ntile * kTile, win[parity ^ 1]);
    if (tile == 0) {
      for (int k = 0; k < W; ++k) wf[k] = to_float(w[c * W + k]);
      bf = bias != nullptr ? to_float(bias[c]) : 0.0f;
    }
    compute_tile(p, wf, bf, win[parity], cur.yrow, tile * kTile);
    if (tile == tiles - 1 && cur.srow != nullptr) save_state_row(p, cur.srow, cur.xrow, 1);
    r = nr, b = nb, c = nc, tile = ntile, cur = next;
  }
}

// Loads channels [c0, c0 + nc) of a unit-stride channel vector as kBlockV float vectors (zeros
// past nc).
template <typename T>
FS_INLINE void load_block(const T* src, int nc, simd::vf (&v)[kBlockV]) {
  constexpr int V = simd::kLanes;
  if (nc == kBlockC) {
    for (int q = 0; q < kBlockV; ++q) v[q] = simd::load(src + q * V);
    return;
  }
  alignas(64) float tmp[kBlockC];
  for (int q = 0; q < kBlockC; ++q) tmp[q] = q < nc ? to_float(src[q]) : 0.0f;
  for (int q = 0; q < kBlockV; ++q) v[q] = simd::load(tmp + q * V);
}

template <typename T>
FS_INLINE void store_block(T* dst, int nc, const simd::vf (&v)[kBlockV]) {
  constexpr int V = simd::kLanes;
  if (nc == kBlockC) {
    for (int q = 0; q < kBlockV; ++q) simd::store(dst + q * V, v[q]);
    return;
  }
  alignas(64) T tmp[kBlockC];
  for (int q = 0; q < kBlockV; ++q) simd::store(tmp + q * V, v[q]);
  for (int q = 0; q < nc; ++q) copy_raw(dst + q, tmp + q);
}

// Tasks [k0, k1) of ceil(C / kBlockC) * B, x and y unit-stride along channels. Tasks run
// block-major (task = block * B + b), so consecutive tasks reuse the block's transposed weights.
template <typename T>
void channel_last(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                  const int32_t* indices, T* y, float* scratch, int64_t k0, int64_t k1) {
  const int W = p.width, dil = p.dilation;
  const int64_t L = p.state_len, Tn = p.seqlen;
  constexpr int V = simd::kLanes;
  alignas(64) float wf[kMaxWidth * kBlockC];
  alignas(64) float bf[kBlockC];
  int64_t packed_block = -1;
  for (int64_t task = k0; task < k1; ++task) {
    const int64_t blk = task / p.batch, b = task % p.batch, c0 = blk * kBlockC;
    const int nc = int(p.channels - c0 < kBlockC ? p.channels - c0 : kBlockC);
    if (blk != packed_block) {
      for (int k = 0; k < W; ++k)
        for (int q = 0; q < kBlockC; ++q) wf[k * kBlockC + q] = q < nc ? to_float(w[(c0 + q) * W + k]) : 0.0f;
      for (int q = 0; q < kBlockC; ++q) bf[q] = (q < nc && bias != nullptr) ? to_float(bias[c0 + q]) : 0.0f;
      packed_block = blk;
    }
    const int64_t slot = state_slot(p, state, indices, b);
    T* sblk = slot >= 0 ? state + slot * p.s_sb + c0 * p.s_sc : nullptr;
    // scratch[l * kBlockC + q] = state[slot, c0 + q, l]: the block's history as channel vectors.
    for (int64_t l = 0; l < L; ++l)
      for (int q = 0; q < kBlockC; ++q)
        scratch[l * kBlockC + q] = (sblk != nullptr && q < nc) ? to_float(sblk[q * p.s_sc + l * p.s_sl]) : 0.0f;
    const T* xb = x + b * p.x_sb + c0;
    T* yb = y + b * p.y_sb + c0;
    for (int64_t t = 0; t < Tn; ++t) {
      simd::vf acc[kBlockV];
      for (int q = 0; q < kBlockV; ++q) acc[q] = simd::splat(0.0f);
      for (int k = 0; k < W; ++k) {
        const int64_t g = t + int64_t(k) * dil - L;
        simd::vf in[kBlockV];
        if (g < 0) {
          for (int q = 0; q < kBlockV; ++q) in[q] = simd::load(scratch + (L + g) * kBlockC + q * V);
        } else {
          load_block(xb + g * p.x_st, nc, in);
        }
        for (int q = 0; q < kBlockV; ++q) acc[q] += simd::load(wf + k * kBlockC + q * V) * in[q];
      }
      for (int q = 0; q < kBlockV; ++q) {
        acc[q] = simd::load(bf + q * V) + acc[q];
        if (p.silu) acc[q] = silu(acc[q]);
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
