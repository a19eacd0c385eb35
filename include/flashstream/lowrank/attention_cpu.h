// Low-rank attention on CPU: project x once into the three rank spaces (P = x [Aq|Ak|Av], fp32),
// then flash attention per work item (sequence b, head h, tile of queries) that rebuilds its query
// tile and, block by block, its key / value tiles from P and the head's columns of Bq / Bk / Bv in
// per-thread scratch. Full Q, K, V and the [S, S] scores never exist. Torch-free; host only;
// compiled once per ISA (everything sits in the inline ISA namespace, see common/simd.h).
//
// All arithmetic is fp32 whatever the input dtype (16-bit inputs are widened on load, the output
// rounded once). Each query row goes through the same sequence of key blocks [0, 64), [64, 128), ...
// whatever its tile, so the result does not depend on the tiling or the thread count.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "flashstream/common/attention_block.h"
#include "flashstream/common/simd.h"
#include "flashstream/lowrank/attention_cpu_tiles.h"
#include "flashstream/lowrank/attention_params.h"

namespace flashstream::lowrank::cpu {

inline namespace FLASHSTREAM_ISA {

using simd::kLanes;
using simd::vf;

using simd::broadcast;

// ---- a small fp32 GEMM: c = scale * (a b + bias), columns in whole vectors ---------------------

// Rows per register block: kGemmRows x 4 accumulators plus 4 loads fit the register file.
inline constexpr int kGemmRows = kLanes >= 16 ? 4 : 2;

// c[i, c0 .. c0 + NV * kLanes) for rows i < nr (1 <= nr <= kGemmRows).
template <int NV>
FS_INLINE void gemm_tile(const float* a, int64_t lda, int nr, const float* b, int64_t ldb, int64_t K, int64_t c0,
                         const float* bias, float scale, float* c, int64_t ldc) {
  vf acc[kGemmRows][NV];
  const float* ar[kGemmRows];
#pragma GCC unroll 4
  for (int i = 0; i < kGemmRows; ++i) {
    ar[i] = a + (i < nr ? i : nr - 1) * lda;  // spare rows repeat the last one and are not stored
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) acc[i][u] = simd::splat(0.f);
  }
  const float* bk = b + c0;
  for (int64_t k = 0; k < K; ++k, bk += ldb) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) bv[u] = simd::load(bk + u * kLanes);
#pragma GCC unroll 4
    for (int i = 0; i < kGemmRows; ++i) {
      const vf av = broadcast(ar[i] + k);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[i][u] = simd::fma(av, bv[u], acc[i][u]);
    }
  }
  for (int i = 0; i < nr; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) {
      vf v = acc[i][u];
      if (bias != nullptr) v += simd::load(bias + c0 + u * kLanes);
      simd::store(c + i * ldc + c0 + u * kLanes, v * scale);
    }
}

// c [M, N] = scale * (a [M, K] b [K, N] + bias [N]); N a multiple of kLanes; bias may be null.
inline void gemm(const float* a, int64_t lda, int64_t M, const float* b, int64_t ldb, int64_t K, int64_t N,
                 const float* bias, float scale, float* c, int64_t ldc) {
  for (int64_t i0 = 0; i0 < M; i0 += kGemmRows) {
    const int nr = int(M - i0 < kGemmRows ? M - i0 : kGemmRows);
    const float* ai = a + i0 * lda;
    float* ci = c + i0 * ldc;
    int64_t c0 = 0;
    for (; c0 + 4 * kLanes <= N; c0 += 4 * kLanes) gemm_tile<4>(ai, lda, nr, b, ldb, K, c0, bias, scale, ci, ldc);
    switch ((N - c0) / kLanes) {
      case 3: gemm_tile<3>(ai, lda, nr, b, ldb, K, c0, bias, scale, ci, ldc); break;
      case 2: gemm_tile<2>(ai, lda, nr, b, ldb, K, c0, bias, scale, ci, ldc); break;
      case 1: gemm_tile<1>(ai, lda, nr, b, ldb, K, c0, bias, scale, ci, ldc); break;
      default: break;
    }
  }
}

template <typename T>
FS_INLINE void widen_row(const T* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) simd::store(dst + i, simd::load(src + i));
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

template <typename T>
FS_INLINE void narrow_row(const float* src, int64_t n, T* dst) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) simd::store(dst + i, simd::load(src + i));
  for (; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// ---- phase 1: the factors A into fp32 and x into the rank spaces ------------------------------

// Rows [begin, end) of A32 = [Aq | Ak | Av], each block zero-padded to rp(z) columns.
template <typename T>
void widen_factors(const AttnArgs& a, int64_t begin, int64_t end) {
  const int64_t RP = a.RP();
  for (int64_t k = begin; k < end; ++k)
    for (int z = 0; z < 3; ++z) {
      float* dst = a.A32 + k * RP + a.roff(z);
      widen_row(static_cast<const T*>(a.A[z]) + k * a.r[z], a.r[z], dst);
      for (int64_t c = a.r[z]; c < a.rp(z); ++c) dst[c] = 0.f;
    }
}

// Rows [begin, end) of P = x A32 (rows of x flattened over [B, S]); xs: project_scratch_floats.
template <typename T>
void project(const AttnArgs& a, int64_t begin, int64_t end, float* xs) {
  const int64_t RP = a.RP(), Din = a.Din;
  const T* x = static_cast<const T*>(a.x);
  for (int64_t r0 = begin; r0 < end; r0 += kProjectRows) {
    const int64_t n = end - r0 < kProjectRows ? end - r0 : kProjectRows;
    const float* xf;
    if constexpr (std::is_same_v<T, float>) {
      xf = x + r0 * Din;
    } else {
      for (int64_t i = 0; i < n; ++i) widen_row(x + (r0 + i) * Din, Din, xs + i * Din);
      xf = xs;
    }
    gemm(xf, Din, n, a.A32, RP, Din, RP, nullptr, 1.f, a.P + r0 * RP, RP);
  }
}

// ---- phase 2: attention ------------------------------------------------------------------------

inline constexpr int kNV = kKeyBlock / kLanes;          // score vectors per row
inline constexpr int kAttnRows = kLanes >= 16 ? 4 : 1;  // rows sharing each key / value load

// Online-softmax update of query rows [r0, r0 + nr) of the tile (query t = t0 + row) with one key
// block at p0 (nb keys; key_ok lanes -1 where the key is not padding, all_keys when every lane
// is). kt: keys transposed [Dhp, kKeyBlock]; vb: values [kKeyBlock, Dhp]; q, acc: [tile, Dhp].
inline void attend_rows(const AttnArgs& a, int64_t t0, int64_t r0, int nr, int64_t p0, int nb,
                        const int32_t* key_ok, bool all_keys, const float* q, int64_t Dhp, const float* kt,
                        const float* vb, float* sc, float* m, float* l, float* acc) {
  int jhi[kAttnRows];
  const float* qr[kAttnRows];
  bool any = false;
  for (int i = 0; i < kAttnRows; ++i) {
    qr[i] = q + (r0 + (i < nr ? i : nr - 1)) * Dhp;
    jhi[i] = 0;
    if (i >= nr) continue;
    int64_t hi = nb;
    if (a.causal) {
      const int64_t lim = t0 + r0 + i - p0 + 1;  // key_visible's j <= t, within the block
      hi = lim < hi ? lim : hi;
    }
    jhi[i] = int(hi > 0 ? hi : 0);
    any |= jhi[i] > 0;
  }
  if (!any) return;

  // Scores: Dhp broadcast-FMAs over the block's key vectors.
  vf s[kAttnRows][kNV];
  attention_block::scores(qr, kt, kKeyBlock, Dhp, s);

  // Softmax bookkeeping; probabilities of keys a row may not see are exactly 0.
  bool active[kAttnRows], whole[kAttnRows];
  int jmax = 0;
  for (int i = 0; i < kAttnRows; ++i) {
    active[i] = jhi[i] > 0;
    whole[i] = all_keys && jhi[i] == kKeyBlock;  // rows that see every key skip the masks
    jmax = jhi[i] > jmax ? jhi[i] : jmax;
  }
  auto visible = [&](int i, int v) {
    simd::vi j, ok;
    for (int e = 0; e < kLanes; ++e) j[e] = v * kLanes + e;
    std::memcpy(&ok, key_ok + v * kLanes, sizeof ok);
    return ok & (j < jhi[i]);
  };
  float corr[kAttnRows];
  attention_block::online_softmax(s, active, whole, visible, m + r0, l + r0, sc, kKeyBlock, corr);

  // acc = acc * corr + P V.
  attention_block::accumulate_pv<kAttnRows>(acc + r0 * Dhp, Dhp, nr, corr, sc, kKeyBlock, vb, 0, jmax);
}

// One work item: sequence b, head h, queries [t0, t1) (t1 - t0 <= a.tile).
template <typename T>
void attend_item(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* scratch) {
  const int64_t Dh = a.Dh, Dhp = pad_to(Dh, kRankPad), N = a.N, RP = a.RP(), nq = t1 - t0;
  float* Bh[3];
  float* bias[3];
  float* p = scratch;
  for (int z = 0; z < 3; ++z) { Bh[z] = p; p += a.r[z] * Dhp; }
  for (int z = 0; z < 3; ++z) { bias[z] = p; p += Dhp; }
  float* q = p;        p += a.tile * Dhp;       // [nq, Dhp] rebuilt, scaled queries
  float* acc = p;      p += a.tile * Dhp;       // [nq, Dhp]
  float* m = p;        p += a.tile;
  float* l = p;        p += a.tile;
  float* kb = p;       p += kKeyBlock * Dhp;    // [kKeyBlock, Dhp] rebuilt keys
  float* kt = p;       p += kKeyBlock * Dhp;    // [Dhp, kKeyBlock] the same, transposed
  float* vb = p;       p += kKeyBlock * Dhp;    // [kKeyBlock, Dhp] rebuilt values
  float* sc = p;       p += 4 * kKeyBlock;      // [kAttnRows, kKeyBlock] probabilities
  int32_t* key_ok = reinterpret_cast<int32_t*>(p);

  // The head's columns of Bq / Bk / Bv and of the biases, in fp32, zero-padded to Dhp.
  for (int z = 0; z < 3; ++z) {
    const T* Bz = static_cast<const T*>(a.Bf[z]) + h * Dh;
    for (int64_t k = 0; k < a.r[z]; ++k) {
      widen_row(Bz + k * N, Dh, Bh[z] + k * Dhp);
      for (int64_t d = Dh; d < Dhp; ++d) Bh[z][k * Dhp + d] = 0.f;
    }
    for (int64_t d = 0; d < Dhp; ++d) bias[z][d] = 0.f;
    if (a.bias[z] != nullptr) widen_row(static_cast<const T*>(a.bias[z]) + h * Dh, Dh, bias[z]);
  }

  const float* Pb = a.P + b * a.S * RP;
  gemm(Pb + t0 * RP + a.roff(0), RP, nq, Bh[0], Dhp, a.r[0], Dhp, bias[0], a.scale, q, Dhp);
  for (int64_t r = 0; r < nq; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
  }
  std::memset(acc, 0, nq * Dhp * sizeof(float));

  const int64_t kend = key_end(a, t1);
  for (int64_t p0 = 0; p0 < kend; p0 += kKeyBlock) {
    const int nb = int(kend - p0 < kKeyBlock ? kend - p0 : kKeyBlock);
    int visible = 0;
    for (int j = 0; j < kKeyBlock; ++j) {
      const bool ok = j < nb && (a.key_padding_mask == nullptr || !a.key_padding_mask[b * a.S + p0 + j]);
      key_ok[j] = ok ? -1 : 0;
      visible += ok;
    }
    if (visible == 0) continue;  // an all-padding block: nothing to rebuild
    gemm(Pb + p0 * RP + a.roff(1), RP, nb, Bh[1], Dhp, a.r[1], Dhp, bias[1], 1.f, kb, Dhp);
    gemm(Pb + p0 * RP + a.roff(2), RP, nb, Bh[2], Dhp, a.r[2], Dhp, bias[2], 1.f, vb, Dhp);
    if (nb < kKeyBlock) {  // lanes past nb must be finite zeros: they meet probability 0
      std::memset(kb + nb * Dhp, 0, (kKeyBlock - nb) * Dhp * sizeof(float));
      std::memset(vb + nb * Dhp, 0, (kKeyBlock - nb) * Dhp * sizeof(float));
    }
    for (int j0 = 0; j0 < kKeyBlock; j0 += kLanes)  // kt = kb^T, in-register tiles (Dhp: whole vectors)
      for (int64_t d0 = 0; d0 < Dhp; d0 += kLanes) simd::transpose_tile(kb + j0 * Dhp + d0, Dhp, kt + d0 * kKeyBlock + j0, kKeyBlock);
    for (int64_t r0 = 0; r0 < nq; r0 += kAttnRows)
      attend_rows(a, t0, r0, int(nq - r0 < kAttnRows ? nq - r0 : kAttnRows), p0, nb, key_ok, visible == kKeyBlock, q,
                  Dhp, kt, vb, sc, m, l, acc);
  }

  // Normalise; a row that saw no key at all (every key padding) is zero.
  T* out = static_cast<T*>(a.out) + (b * a.S + t0) * N + h * Dh;
  for (int64_t r = 0; r < nq; ++r) {
    float* ar = acc + r * Dhp;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int64_t d = 0; d < Dhp; ++d) ar[d] *= inv;
    narrow_row(ar, Dh, out + r * N);
  }
}

// Work items [begin, end) of B * H * ceil(S / tile).
template <typename T>
void attend(const AttnArgs& a, int64_t begin, int64_t end, float* scratch) {
  const int64_t tiles = (a.S + a.tile - 1) / a.tile;
  for (int64_t w = begin; w < end; ++w) {
    const int64_t tt = w % tiles, bh = w / tiles;
    const int64_t t0 = tt * a.tile, t1 = t0 + a.tile < a.S ? t0 + a.tile : a.S;
    attend_item<T>(a, bh / a.H, bh % a.H, t0, t1, scratch);
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::lowrank::cpu
