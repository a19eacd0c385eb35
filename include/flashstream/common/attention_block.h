// The two inner products of the CPU flash-attention kernels (sink attention, low-rank attention),
// for R rows of queries and one block of NV * kLanes keys: scores against keys stored transposed
// (Kt[d][j], so a row's scores are broadcast-FMAs over key vectors, no horizontal sums), and the
// rescaled accumulation acc = acc * corr + P V, and the online-softmax step between them (the
// kernels say which keys each row sees).
// Host only, on common/simd.h (one copy per ISA).
#pragma once
#include <cstdint>

#include "flashstream/common/simd.h"

namespace flashstream::attention_block {
inline namespace FLASHSTREAM_ISA {

using simd::kLanes;
using simd::vf;

// s[i][v] = sum_d q[i][d] * Kt[d][v * kLanes + lane] over d < D (kt rows kb floats apart).
template <int R, int NV>
FS_INLINE void scores(const float* const (&q)[R], const float* kt, int64_t kb, int64_t D, vf (&s)[R][NV]) {
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) s[i][v] = simd::splat(0.f);
  for (int64_t d = 0; d < D; ++d) {
    vf kv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) kv[v] = simd::load(kt + d * kb + v * kLanes);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const vf qd = simd::broadcast(q[i] + d);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) s[i][v] = simd::fma(qd, kv[v], s[i][v]);
    }
  }
}

// The online-softmax step of R rows over one key block, after their scores s: lanes a row does not
// see (visible(i, v), a lane mask per score vector; rows with whole[i] see every lane and skip the
// masks) are excluded; then the running max m[i] and sum l[i], the probabilities p[i * kb + j]
// (exactly 0 where not visible) and the factors corr[i] that rescale the row's accumulator. Rows
// that are not active, or see nothing here, keep m and l, corr 1 and a zero p row. All rows'
// maxima come first, so their rescale factors are one vector exp.
template <int R, int NV, typename Visible>
FS_INLINE void online_softmax(vf (&s)[R][NV], const bool (&active)[R], const bool (&whole)[R], Visible&& visible,
                              float* m, float* l, float* p, int64_t kb, float* corr) {
  static_assert(R <= kLanes, "one lane per row for the rescale factors");
  bool live[R];
  float m_new[R];
  vf m_shift = simd::splat(0.f);  // lane i: m_old - m_new of row i (0: corr = 1)
  for (int i = 0; i < R; ++i) {
    live[i] = false;
    m_new[i] = -INFINITY;
    if (!active[i]) continue;
    vf mx = simd::splat(-INFINITY);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      if (!whole[i]) s[i][v] = simd::select(visible(i, v), s[i][v], simd::splat(-INFINITY));
      mx = simd::max(mx, s[i][v]);
    }
    const float m_blk = simd::hmax(mx);
    if (m_blk == -INFINITY) continue;  // nothing visible to this row in the block
    live[i] = true;
    m_new[i] = m_blk > m[i] ? m_blk : m[i];
    m_shift[i] = m[i] - m_new[i];  // -inf on the row's first block
  }
  // exp(-inf) is 0 exactly; simd::exp clamps to e^-87, which multiplies a zero acc and l alike
  const vf c = simd::exp(m_shift);
  for (int i = 0; i < R; ++i) {
    float* pi = p + i * kb;
    if (!live[i]) {
      corr[i] = 1.f;
      for (int j = 0; j < NV * kLanes; ++j) pi[j] = 0.f;
      continue;
    }
    corr[i] = c[i];
    vf psum = simd::splat(0.f);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      vf pv = simd::exp(s[i][v] - m_new[i]);
      if (!whole[i]) pv = simd::select(visible(i, v), pv, simd::splat(0.f));  // masked: 0, not e^-87
      psum += pv;
      simd::store(pi + v * kLanes, pv);
    }
    l[i] = l[i] * corr[i] + simd::hsum(psum);
    m[i] = m_new[i];
  }
}

// The P V loops run over head dims four vectors at a time: the vectors of chunk d0 (< 4 at the end).
FS_INLINE int head_vectors(int64_t Dp, int64_t d0) {
  const int64_t left = (Dp - d0) / kLanes;
  return int(left < 4 ? left : 4);
}

// av = rows i < nr of acc (Dp floats apart), head-dim chunk d0, times corr[i]; zeros elsewhere.
template <int R>
FS_INLINE void load_rescaled(const float* acc, int64_t Dp, int64_t d0, int nr, int nvd, const float* corr,
                             vf (&av)[R][4]) {
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
      av[i][u] = (i < nr && u < nvd) ? simd::load(acc + i * Dp + d0 + u * kLanes) * corr[i] : simd::splat(0.f);
}

// The inverse: rows i < nr, vectors u < nvd of chunk d0 back to acc.
template <int R>
FS_INLINE void store_rows(float* acc, int64_t Dp, int64_t d0, int nr, int nvd, const vf (&av)[R][4]) {
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
      if (i < nr && u < nvd) simd::store(acc + i * Dp + d0 + u * kLanes, av[i][u]);
}

// Rows i < nr of acc (Dp floats apart): acc[i] = acc[i] * corr[i] + sum_{j in [j0, j1)} p[i][j] vb[j]
// (p rows kb floats apart, vb rows Dp floats apart), four vectors of head dims at a time.
template <int R>
FS_INLINE void accumulate_pv(float* acc, int64_t Dp, int nr, const float* corr, const float* p, int64_t kb,
                             const float* vb, int64_t j0, int64_t j1) {
  for (int64_t d0 = 0; d0 < Dp; d0 += 4 * kLanes) {
    const int nvd = head_vectors(Dp, d0);
    vf av[R][4];
    load_rescaled(acc, Dp, d0, nr, nvd, corr, av);
    for (int64_t j = j0; j < j1; ++j) {
      const float* vj = vb + j * Dp + d0;
      vf vv[4];
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) vv[u] = u < nvd ? simd::load(vj + u * kLanes) : simd::splat(0.f);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const vf pj = simd::broadcast(p + i * kb + j);
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) av[i][u] = simd::fma(pj, vv[u], av[i][u]);
      }
    }
    store_rows(acc, Dp, d0, nr, nvd, av);
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::attention_block
