// Sink attention on CPU, bf16 inputs on AVX512-BF16 machines: the row-block update of cpu.h with
// the two products as bf16 dot products (vdpbf16ps: pairs of bf16 multiplied, summed in fp32),
// twice the work per instruction of the fp32 FMAs. Keys and queries are rounded to bf16 after
// rotation and scaling, the probabilities before P V; sums stay fp32. Compiled only into the
// AVX-512 build, behind a function-level target and a run-time CPU check (has_avx512bf16), so the
// instruction set list of the build is unchanged. Included by cpu.h only.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

#define FS_SINK_HAS_BF16_PATH 1
#define FS_BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace flashstream::sink::cpu {
inline namespace FLASHSTREAM_ISA {

inline bool has_avx512bf16() {
  static const bool ok = __builtin_cpu_supports("avx512bf16");
  return ok;
}

// 16 floats -> 16 bf16 (round to nearest even, as from_float) in the low halves of 32-bit lanes.
FS_BF16_TARGET FS_INLINE __m512i bf16_lanes(const float* p) {
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(p)));
}

// rows [n, Dp] fp32 -> [n, Dp / 2] pairs along the head dim (a bf16 row read as 32-bit lanes).
FS_BF16_TARGET inline void pack_rows_bf16(const float* rows, int64_t n, int64_t Dp, uint32_t* out) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t d = 0; d < Dp; d += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * (Dp / 2) + d / 2),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(rows + r * Dp + d)));
}

// A key block kr [kKeyBlock, Dp] -> kp [Dp / 2, kKeyBlock] (pairs along d: lane = key), and its
// values vb [kKeyBlock, Dp] -> vp [kKeyBlock / 2, Dp] (pairs along keys: lane = head dim).
// The keys go 16 at a time through an in-register 16 x 16 transpose of their 32-bit pairs.
static_assert(simd::kLanes == 16, "cpu_bf16.h is compiled into the AVX-512 build only");
FS_BF16_TARGET inline void pack_block_bf16(const float* kr, const float* vb, int64_t Dp, uint32_t* kp, uint32_t* vp) {
  const int64_t P = Dp / 2;
  alignas(64) uint32_t rows[16 * 128];  // [16 keys, P], P <= 128
  for (int j0 = 0; j0 < kKeyBlock; j0 += 16) {
    pack_rows_bf16(kr + j0 * Dp, 16, Dp, rows);
    int64_t u0 = 0;
    for (; u0 + 16 <= P; u0 += 16)  // pairs are moved as 32-bit lanes: bit-exact through float shuffles
      simd::transpose_tile(reinterpret_cast<const float*>(rows + u0), P, reinterpret_cast<float*>(kp + u0 * kKeyBlock + j0),
                           kKeyBlock);
    for (; u0 < P; ++u0)
      for (int j = 0; j < 16; ++j) kp[u0 * kKeyBlock + j0 + j] = rows[j * P + u0];
  }
  for (int w = 0; w < kKeyBlock / 2; ++w)
    for (int64_t d = 0; d < Dp; d += 16) {
      const __m512i lo = bf16_lanes(vb + 2 * w * Dp + d), hi = bf16_lanes(vb + (2 * w + 1) * Dp + d);
      _mm512_storeu_si512(vp + w * Dp + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

// block_rows (cpu.h) on packed bf16 operands; qfb: the frame's queries [rows, Dp / 2].
FS_BF16_TARGET inline void block_rows_bf16(const Visible* vis, int64_t G, int frame, int64_t p0, int nb, int64_t Dp,
                                           int64_t r0, int nr, const uint32_t* qfb, const uint32_t* kp,
                                           const uint32_t* vp, float cap, float* sc, float* m, float* l, float* acc) {
  static const uint32_t zero_pairs[128] = {};  // Dp / 2 <= 128
  const int64_t P = Dp / 2;
  int64_t jlo[kRowBlock], jhi[kRowBlock];
  const uint32_t* qr[kRowBlock];
  bool any = false;
  for (int i = 0; i < kRowBlock; ++i) {
    jlo[i] = 0;
    jhi[i] = 0;
    qr[i] = zero_pairs;
    if (i >= nr) continue;
    const Visible& vi = vis[(r0 + i) / G];
    int64_t lo = frame == 0 ? 0 : vi.lo - p0, hi = frame == 0 ? vi.sv - p0 : vi.hi - p0;
    lo = lo < 0 ? 0 : lo;
    hi = hi > nb ? nb : hi;
    if (lo < hi) {
      jlo[i] = lo;
      jhi[i] = hi;
      qr[i] = qfb + (r0 + i) * P;
      any = true;
    }
  }
  if (!any) return;
  vf s[kRowBlock][kNV];
  for (int i = 0; i < kRowBlock; ++i)
    for (int v = 0; v < kNV; ++v) s[i][v] = simd::splat(0.f);
  for (int64_t u = 0; u < P; ++u) {
    __m512i kv[kNV];
#pragma GCC unroll 16
    for (int v = 0; v < kNV; ++v) kv[v] = _mm512_loadu_si512(kp + u * kKeyBlock + v * 16);
#pragma GCC unroll 4
    for (int i = 0; i < kRowBlock; ++i) {
      const __m512bh qd = (__m512bh)_mm512_set1_epi32(int(qr[i][u]));
#pragma GCC unroll 16
      for (int v = 0; v < kNV; ++v) s[i][v] = (vf)_mm512_dpbf16_ps((__m512)s[i][v], (__m512bh)kv[v], qd);
    }
  }
  float corr[kRowBlock];
  int64_t jmin = kKeyBlock, jmax = 0;
  softmax_rows(s, jlo, jhi, r0, cap, sc, m, l, corr, jmin, jmax);
  // The probabilities as bf16 pairs of consecutive keys (a bf16 row read as 32-bit lanes).
  alignas(64) uint32_t scp[kRowBlock][kKeyBlock / 2];
  for (int i = 0; i < kRowBlock; ++i) pack_rows_bf16(sc + i * kKeyBlock, 1, kKeyBlock, scp[i]);
  // acc = acc * corr + P V, key pairs [2w, 2w + 1] per dot product (sc is 0 outside each row's keys).
  for (int64_t d0 = 0; d0 < Dp; d0 += 64) {
    const int nvd = attention_block::head_vectors(Dp, d0);
    vf av[kRowBlock][4];
    attention_block::load_rescaled(acc + r0 * Dp, Dp, d0, nr, nvd, corr, av);
    for (int64_t w = jmin / 2; w < (jmax + 1) / 2; ++w) {
      __m512i vv[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) vv[q] = q < nvd ? _mm512_loadu_si512(vp + w * Dp + d0 + q * 16) : _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int i = 0; i < kRowBlock; ++i) {
        const __m512bh pp = (__m512bh)_mm512_set1_epi32(int(scp[i][w]));
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) av[i][q] = (vf)_mm512_dpbf16_ps((__m512)av[i][q], (__m512bh)vv[q], pp);
      }
    }
    attention_block::store_rows(acc + r0 * Dp, Dp, d0, nr, nvd, av);
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::sink::cpu

#endif  // __AVX512F__
