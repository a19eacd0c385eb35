// Sink KV cache, CPU attention kernel: attention over (paged cache + new tokens) with in-kernel
// rotary and an online softmax (the append is in cpu_append.h). Torch-free; host only; compiled
// once per ISA (see common/simd.h for why everything sits in the inline ISA namespace).
//
// Attention work item = (stream b, kv head h, tile of consecutive queries). Its rows are the
// tile's queries times the G = Hq/Hkv query heads sharing h (GQA), so each key block is loaded,
// converted and rotated once for all of them. Keys are visited in blocks of kKeyBlock in two
// frames (params.h): the sink tokens [0, max sv) and the window range [min lo, max hi); each
// row masks the keys it may not see. A key block is stored transposed (Kt[d][j]) so that a row's
// scores are D broadcast-FMAs over vectors of keys, with no horizontal sums. bf16 inputs on CPUs
// with AVX512-BF16 use bf16 dot products instead (cpu_bf16.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "flashstream/common/attention_block.h"
#include "flashstream/common/simd.h"
#include "flashstream/sink/args.h"
#include "flashstream/sink/cpu_tiles.h"
#include "flashstream/sink/split.h"

namespace flashstream::sink::cpu {

inline namespace FLASHSTREAM_ISA {

using simd::vf;
using simd::kLanes;
using simd::broadcast;

template <typename T>
FS_INLINE void load_row_f(const T* src, int64_t D, float* dst) {
  if (D % kLanes == 0) {
    for (int64_t d = 0; d < D; d += kLanes) simd::store(dst + d, simd::load(src + d));
  } else {
    for (int64_t d = 0; d < D; ++d) dst[d] = to_float(src[d]);
  }
}

template <typename T>
FS_INLINE void store_row_f(const float* src, int64_t D, T* dst) {
  if (D % kLanes == 0) {
    for (int64_t d = 0; d < D; d += kLanes) simd::store(dst + d, simd::load(src + d));
  } else {
    for (int64_t d = 0; d < D; ++d) dst[d] = from_float<T>(src[d]);
  }
}

// cos / sin of (P0 + j) * inv_freq[f] for j < count, f < half, into cs[j * half + f], sn[...].
// Seeded exactly in double at P0 (any size: absolute positions of long streams), then advanced by
// the double angle-addition recurrence (error ~count * 1e-16), rounded once to float.
// With `resume`, (c, s) already hold the angles of P0 (left there by the previous call, which
// ended at P0): consecutive key blocks then share one seed per frame.
inline void rope_table(int64_t P0, int count, int half, const double* inv_freq, const double* step_c,
                       const double* step_s, double* c, double* s, float* cs, float* sn, bool resume = false) {
  for (int f = 0; f < half && !resume; ++f) {
    const double a = double(P0) * inv_freq[f];
    c[f] = std::cos(a);
    s[f] = std::sin(a);
  }
  for (int j = 0; j < count; ++j) {
    float* cj = cs + j * half;
    float* sj = sn + j * half;
    for (int f = 0; f < half; ++f) {
      cj[f] = float(c[f]);
      sj[f] = float(s[f]);
      const double nc = c[f] * step_c[f] - s[f] * step_s[f];
      const double ns = s[f] * step_c[f] + c[f] * step_s[f];
      c[f] = nc;
      s[f] = ns;
    }
  }
}

// x (float, D) rotated in place by the table row (cs, sn).
FS_INLINE void rope_apply(RopeStyle style, int half, const float* cs, const float* sn, float* x) {
  if (style == RopeStyle::half) {
    float* x1 = x;
    float* x2 = x + half;
    for (int f = 0; f < half; ++f) {
      const float a = x1[f], b = x2[f];
      x1[f] = a * cs[f] - b * sn[f];
      x2[f] = b * cs[f] + a * sn[f];
    }
  } else {
    for (int f = 0; f < half; ++f) {
      const float a = x[2 * f], b = x[2 * f + 1];
      x[2 * f] = a * cs[f] - b * sn[f];
      x[2 * f + 1] = b * cs[f] + a * sn[f];
    }
  }
}

// Per-work-item context, carved out of the caller's scratch.
struct Rope {
  int half;
  const double* inv_freq;
  const double* step_c;
  const double* step_s;
  double* c;
  double* s;
  float* cs;
  float* sn;
};

// Rotates `count` rows (stride Dp) at positions pos[r] (r < count); positions that fall in a
// window of kRopeTable share one table, others get their own seed.
inline void rope_rows(const Rope& R, RopeStyle style, const int64_t* pos, int64_t count, int64_t Dp, float* rows) {
  int64_t r = 0;
  while (r < count) {
    int64_t lo = pos[r], hi = pos[r];
    int64_t e = r;
    while (e < count) {
      const int64_t nlo = pos[e] < lo ? pos[e] : lo, nhi = pos[e] > hi ? pos[e] : hi;
      if (nhi - nlo >= kRopeTable) break;
      lo = nlo;
      hi = nhi;
      ++e;
    }
    rope_table(lo, int(hi - lo + 1), R.half, R.inv_freq, R.step_c, R.step_s, R.c, R.s, R.cs, R.sn);
    for (int64_t k = r; k < e; ++k)
      rope_apply(style, R.half, R.cs + (pos[k] - lo) * R.half, R.sn + (pos[k] - lo) * R.half, rows + k * Dp);
    r = e;
  }
}

template <typename T>
FS_INLINE const T* key_row(const AttnArgs& a, const T* base_new, const T* pool, int64_t b, int64_t h, int64_t n,
                           bool full, int64_t p) {
  if (p >= n) return base_new + ((b * a.T + (p - n)) * a.Hkv + h) * a.D;
  const int64_t off = slot_offset(a.page_table, a.pages_per_head, a.page_size, a.pool_pages, a.D, b, h, a.Hkv,
                                  slot_of(a.g, p, full));
  return pool + off;
}

// Rows per register block: they share every key / value vector load. kKeyBlock / kLanes score
// vectors per row stay in registers: 4 rows x 4 zmm on AVX-512; one row elsewhere.
inline constexpr int kNV = kKeyBlock / kLanes;
inline constexpr int kRowBlock = kLanes >= 16 ? 4 : 1;

// Online-softmax bookkeeping of a row block after its scores s (attention_block::online_softmax):
// soft-cap, each row's key range [jlo, jhi) as its mask, the probabilities into
// sc[i * kKeyBlock + j], and the union [jmin, jmax) of the rows' visible keys.
FS_INLINE void softmax_rows(vf (&s)[kRowBlock][kNV], const int64_t* jlo, const int64_t* jhi, int64_t r0, float cap,
                            float* sc, float* m, float* l, float* corr, int64_t& jmin, int64_t& jmax) {
  bool active[kRowBlock], whole[kRowBlock];
  for (int i = 0; i < kRowBlock; ++i) {
    active[i] = jlo[i] < jhi[i];
    whole[i] = jlo[i] == 0 && jhi[i] == kKeyBlock;
    if (active[i]) {
      jmin = jlo[i] < jmin ? jlo[i] : jmin;
      jmax = jhi[i] > jmax ? jhi[i] : jmax;
    }
  }
  if (cap > 0.f) {
    const float inv_cap = 1.f / cap;
    for (int i = 0; i < kRowBlock; ++i)
      for (int v = 0; v < kNV; ++v) s[i][v] = simd::tanh(s[i][v] * inv_cap) * cap;
  }
  auto visible = [&](int i, int v) {  // lanes of score vector v that row i sees
    simd::vi j = simd::vi{};
    for (int e = 0; e < kLanes; ++e) j[e] = v * kLanes + e;
    return (j >= int32_t(jlo[i])) & (j < int32_t(jhi[i]));
  };
  attention_block::online_softmax(s, active, whole, visible, m + r0, l + r0, sc, kKeyBlock, corr);
}

// Online-softmax update of rows [r0, r0 + nr) with one key block (kt: transposed keys, vb: values).
FS_INLINE void block_rows(const Visible* vis, int64_t G, int frame, int64_t p0, int nb, int64_t D, int64_t Dp,
                          int64_t r0, int nr, const float* qf, const float* kt, const float* vb, float cap, float* sc,
                          float* m, float* l, float* acc, const float* zero_row) {
  int64_t jlo[kRowBlock], jhi[kRowBlock];
  const float* qr[kRowBlock];
  bool any = false;
  for (int i = 0; i < kRowBlock; ++i) {
    jlo[i] = 0;
    jhi[i] = 0;
    qr[i] = zero_row;  // inactive rows score a row of zeros, and are then ignored
    if (i >= nr) continue;
    const Visible& vi = vis[(r0 + i) / G];
    int64_t lo = frame == 0 ? 0 : vi.lo - p0, hi = frame == 0 ? vi.sv - p0 : vi.hi - p0;
    lo = lo < 0 ? 0 : lo;
    hi = hi > nb ? nb : hi;
    if (lo < hi) {
      jlo[i] = lo;
      jhi[i] = hi;
      qr[i] = qf + (r0 + i) * Dp;
      any = true;
    }
  }
  if (!any) return;
  // Scores: D broadcast-FMAs over the block's key vectors, kRowBlock rows at once.
  vf s[kRowBlock][kNV];
  attention_block::scores(qr, kt, kKeyBlock, D, s);
  // Softmax bookkeeping per row; probabilities outside a row's [jlo, jhi) are exactly 0.
  float corr[kRowBlock];
  int64_t jmin = kKeyBlock, jmax = 0;
  softmax_rows(s, jlo, jhi, r0, cap, sc, m, l, corr, jmin, jmax);
  // acc = acc * corr + P V over the rows' union of keys.
  attention_block::accumulate_pv<kRowBlock>(acc + r0 * Dp, Dp, nr, corr, sc, kKeyBlock, vb, jmin, jmax);
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::sink::cpu

#include "flashstream/sink/cpu_bf16.h"  // the AVX512-BF16 row block (AVX-512 builds only)

namespace flashstream::sink::cpu {
inline namespace FLASHSTREAM_ISA {

// Split-KV: a work item's unnormalised softmax state of its rows (split.h), for merge_splits. Out
// of line on purpose: written inline in attend_item (with the split bounds computed for every
// frame), the unsplit path ran 1.5x slower with GCC 12 (64-token step, fp32, measured).
inline __attribute__((noinline)) void write_partials(const AttnArgs& a, int64_t b, int64_t h, int64_t t0,
                                                     int64_t rows, int64_t G, int64_t split, const float* m,
                                                     const float* l, const float* acc) {
  const int64_t stride = a.B * a.T * a.Hq, D = a.D, Dp = padded_dim(D);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = (b * a.T + t0 + r / G) * a.Hq + h * G + r % G, at = split * stride + row;
    a.part_m[at] = m[r];
    a.part_l[at] = l[r];
    std::memcpy(a.part_acc + at * D, acc + r * Dp, D * sizeof(float));
  }
}

// One work item: stream b, kv head h, queries [t0, t1) of the step, the keys of split `split`
// (split.h; the whole range when a.splits == 1).
template <typename T>
void attend_item(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, int64_t split, float* scratch) {
  const int64_t D = a.D, Dp = padded_dim(D), G = a.Hq / a.Hkv, half = D / 2;
  const int64_t nq = t1 - t0, rows = nq * G;
  const int64_t n = a.lengths != nullptr ? a.lengths[b] : 0;
  const bool full = a.full_heads != nullptr && a.full_heads[h];
  const bool rotary = a.positions != Positions::none;

  float* qs = scratch;                 // [rows, Dp] queries in the sink frame (scaled)
  float* qw = qs + rows * Dp;          // [rows, Dp] queries in the window frame (scaled)
  float* acc = qw + rows * Dp;         // [rows, Dp]
  float* m = acc + rows * Dp;          // [rows]
  float* l = m + rows;                 // [rows]
  float* kt = l + rows;                // [Dp, kKeyBlock] keys of a block, transposed
  float* kr = kt + Dp * kKeyBlock;     // [kKeyBlock, Dp] keys of a block, rotated rows
  float* vb = kr + Dp * kKeyBlock;     // [kKeyBlock, Dp]
  float* sc = vb + kKeyBlock * Dp;     // [kRowBlock, kKeyBlock] probabilities
  float* cs = sc + 4 * kKeyBlock;      // rope tables [kRopeTable, half] x 2
  float* sn = cs + kRopeTable * half;
  float* zero_row = sn + kRopeTable * half;  // [Dp] zeros
  std::memset(zero_row, 0, Dp * sizeof(float));
  double* dbl = reinterpret_cast<double*>(((reinterpret_cast<uintptr_t>(zero_row + Dp)) + 63) & ~uintptr_t(63));
  Rope R{int(half), dbl, dbl + half, dbl + 2 * half, dbl + 3 * half, dbl + 4 * half, cs, sn};
  if (rotary) {
    double* inv = dbl;
    for (int64_t f = 0; f < half; ++f) {
      inv[f] = std::pow(a.rope_theta, -2.0 * double(f) / double(D));
      dbl[half + f] = std::cos(inv[f]);
      dbl[2 * half + f] = std::sin(inv[f]);
    }
  }

  // Visibility per query, and the tile's key ranges in each frame.
  Visible vis[kMaxQueryTile];
  for (int64_t t = 0; t < nq; ++t) vis[t] = visible(a.g, n, a.T, n + t0 + t, full);
  const TileKeys tile = tile_keys(vis, nq);
  const int64_t sink_end = tile.sink_end, win_lo = tile.win_lo, win_hi = tile.win_hi;
  const int64_t base = win_lo == INT64_MAX ? 0 : win_lo;

  // Queries: load, scale, rotate into both frames.
  const T* q = static_cast<const T*>(a.q);
  int64_t pos_s[kMaxRows], pos_w[kMaxRows];
  for (int64_t t = 0; t < nq; ++t) {
    const int64_t i = n + t0 + t;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r = t * G + g;
      float* row = qs + r * Dp;
      std::memset(row, 0, Dp * sizeof(float));
      load_row_f(q + ((b * a.T + t0 + t) * a.Hq + h * G + g) * D, D, row);
      for (int64_t d = 0; d < D; ++d) row[d] *= a.scale;
      std::memcpy(qw + r * Dp, row, Dp * sizeof(float));
      pos_s[r] = query_pos_sink_frame(a.positions, vis[t], i);
      pos_w[r] = query_pos_window_frame(a.positions, vis[t], i, base);
    }
  }
  if (rotary) {
    rope_rows(R, a.rope_style, pos_s, rows, Dp, qs);
    rope_rows(R, a.rope_style, pos_w, rows, Dp, qw);
  }
  for (int64_t r = 0; r < rows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
  }
#if defined(FS_SINK_HAS_BF16_PATH)
  // bf16 scratch after the doubles: packed key / value pairs of a block, queries of both frames.
  const bool bf16_dots = std::is_same_v<T, bf16_t> && has_avx512bf16();
  uint32_t* kp = reinterpret_cast<uint32_t*>(dbl + 5 * half);  // [Dp / 2, kKeyBlock]
  uint32_t* vp = kp + Dp / 2 * kKeyBlock;                       // [kKeyBlock / 2, Dp]
  uint32_t* qsb = vp + kKeyBlock / 2 * Dp;                      // [rows, Dp / 2]
  uint32_t* qwb = qsb + rows * (Dp / 2);
  if (bf16_dots) {
    pack_rows_bf16(qs, rows, Dp, qsb);
    pack_rows_bf16(qw, rows, Dp, qwb);
  }
#endif
  std::memset(acc, 0, rows * Dp * sizeof(float));

  const T* knew = static_cast<const T*>(a.k);
  const T* vnew = static_cast<const T*>(a.v);
  const T* kpool = static_cast<const T*>(a.k_pool);
  const T* vpool = static_cast<const T*>(a.v_pool);
  const float cap = a.softcap;

  // frame 0: sink keys [0, sink_end) at positions p; frame 1: window keys [win_lo, win_hi) at p - base.
  for (int frame = 0; frame < 2; ++frame) {
    int64_t k_begin = frame == 0 ? 0 : base;
    int64_t k_end = frame == 0 ? sink_end : (win_lo == INT64_MAX ? base : win_hi);
    if (a.splits > 1) {  // this split's share of the frame's keys
      const KeyRange keys = split_frame_keys(frame, sink_end, base, win_lo == INT64_MAX ? base : win_hi, split,
                                             a.splits);
      k_begin = keys.begin;
      k_end = keys.end;
    }
    const float* qf = frame == 0 ? qs : qw;
    int64_t rope_next = INT64_MIN;  // the position the rotary recurrence has reached
    for (int64_t p0 = k_begin; p0 < k_end; p0 += kKeyBlock) {
      const int nb = int(k_end - p0 < kKeyBlock ? k_end - p0 : kKeyBlock);
      // Load (and rotate) the block; lanes past nb stay zero so they add nothing.
      if (nb < kKeyBlock) {  // lanes past nb must be zeros (finite), so they add nothing
        std::memset(kr + nb * Dp, 0, (kKeyBlock - nb) * Dp * sizeof(float));
        std::memset(vb + nb * Dp, 0, (kKeyBlock - nb) * Dp * sizeof(float));
      }
      if (Dp != D)
        for (int j = 0; j < nb; ++j) {
          std::memset(kr + j * Dp + D, 0, (Dp - D) * sizeof(float));
          std::memset(vb + j * Dp + D, 0, (Dp - D) * sizeof(float));
        }
      for (int j = 0; j < nb; ++j) {
        const int64_t p = p0 + j;
        load_row_f(key_row(a, knew, kpool, b, h, n, full, p), D, kr + j * Dp);
        load_row_f(key_row(a, vnew, vpool, b, h, n, full, p), D, vb + j * Dp);
      }
      const int64_t P0 = frame == 0 ? p0 : p0 - base;  // the block's first key position in its frame
      if (rotary && P0 + nb <= a.key_rope_len) {  // the binding's shared rows
        for (int j = 0; j < nb; ++j)
          rope_apply(a.rope_style, R.half, a.key_cos + (P0 + j) * half, a.key_sin + (P0 + j) * half, kr + j * Dp);
      } else if (rotary) {  // past the shared table: rows built per block
        for (int j0 = 0; j0 < nb; j0 += kRopeTable) {
          const int cnt = nb - j0 < kRopeTable ? nb - j0 : kRopeTable;
          rope_table(P0 + j0, cnt, R.half, R.inv_freq, R.step_c, R.step_s, R.c, R.s, R.cs, R.sn,
                     P0 + j0 == rope_next);
          rope_next = P0 + j0 + cnt;
          for (int j = 0; j < cnt; ++j)
            rope_apply(a.rope_style, R.half, R.cs + j * half, R.sn + j * half, kr + (j0 + j) * Dp);
        }
      }
#if defined(FS_SINK_HAS_BF16_PATH)
      if (bf16_dots) {  // bf16 inputs on a CPU with AVX512-BF16: bf16 dot products, fp32 sums
        pack_block_bf16(kr, vb, Dp, kp, vp);
        const uint32_t* qfb = frame == 0 ? qsb : qwb;
        for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock)
          block_rows_bf16(vis, G, frame, p0, nb, Dp, r0, rows - r0 < kRowBlock ? int(rows - r0) : kRowBlock, qfb, kp,
                          vp, cap, sc, m, l, acc);
        continue;
      }
#endif
      for (int j0 = 0; j0 < kKeyBlock; j0 += kLanes)  // kt = kr^T (Dp is a multiple of kLanes)
        for (int64_t d0 = 0; d0 < Dp; d0 += kLanes) simd::transpose_tile(kr + j0 * Dp + d0, Dp, kt + d0 * kKeyBlock + j0, kKeyBlock);
      for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock)
        block_rows(vis, G, frame, p0, nb, D, Dp, r0, rows - r0 < kRowBlock ? int(rows - r0) : kRowBlock, qf, kt, vb,
                   cap, sc, m, l, acc, zero_row);
    }
  }

  if (a.splits > 1) {  // leave the partial state; merge_splits finishes
    write_partials(a, b, h, t0, rows, G, split, m, l, acc);
    return;
  }

  // Finish: optional sink logit in the denominator, normalise, write out and lse.
  T* out = static_cast<T*>(a.out);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / G, hq = h * G + r % G;
    const RowEnd end = row_end(m[r], l[r], a.sink_logits != nullptr ? a.sink_logits + hq : nullptr);
    float* ar = acc + r * Dp;
    for (int64_t d = 0; d < Dp; ++d) ar[d] *= end.scale;
    store_row_f(ar, D, out + ((b * a.T + t) * a.Hq + hq) * D);
    if (a.lse != nullptr) a.lse[(b * a.T + t) * a.Hq + hq] = end.lse;
  }
}

// Work items [begin, end) of B * Hkv * ceil(T / tile) * splits (the split fastest, so one
// thread's consecutive items share a query tile).
template <typename T>
void attend(const AttnArgs& a, int64_t begin, int64_t end, float* scratch) {
  const int64_t G = a.Hq / a.Hkv, tile = query_tile(G), tiles = (a.T + tile - 1) / tile;
  for (int64_t w = begin; w < end; ++w) {
    const int64_t split = w % a.splits, item = w / a.splits;
    const int64_t tt = item % tiles, bh = item / tiles;
    const int64_t t0 = tt * tile, t1 = t0 + tile < a.T ? t0 + tile : a.T;
    attend_item<T>(a, bh / a.Hkv, bh % a.Hkv, t0, t1, split, scratch);
  }
}

// Split-KV finish for rows [begin, end) of B * T * Hq: merge the splits' partial states (with the
// optional sink logit), normalise, write out and lse.
template <typename T>
void merge_splits(const AttnArgs& a, int64_t begin, int64_t end) {
  const int64_t stride = a.B * a.T * a.Hq, D = a.D;
  T* out = static_cast<T*>(a.out);
  alignas(64) float row_acc[kMaxHeadDim];
  for (int64_t row = begin; row < end; ++row) {
    const float* sl = a.sink_logits != nullptr ? a.sink_logits + row % a.Hq : nullptr;
    const MergedRow mr = merge_row_stats(a.part_m + row, a.part_l + row, a.splits, stride, sl);
    for (int64_t d = 0; d < D; ++d) row_acc[d] = 0.f;
    for (int64_t s = 0; s < a.splits; ++s) {
      const float w = split_weight(mr, a.part_m[s * stride + row]);
      const float* src = a.part_acc + (s * stride + row) * D;
      for (int64_t d = 0; d < D; ++d) row_acc[d] += w * src[d];
    }
    store_row_f(row_acc, D, out + row * D);
    if (a.lse != nullptr) a.lse[row] = mr.m + std::log(mr.l);
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::sink::cpu
