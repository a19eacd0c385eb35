// Low-rank matmul chains on CPU: a packed, register-blocked fp32 GEMM microkernel on
// common/simd.h, and the fused drivers built on it. Torch-free; host only.
//
// Layouts. A right-hand operand (A, B, ... of the ops) is packed once per call into fp32 column
// panels of kNR columns: packed[(panel * K + k) * kNR + j] = op(k, panel * kNR + j), zero past
// the last column, so a k-range of a panel is contiguous and any k sub-range is addressable. A
// left-hand block of rows is converted into a small fp32 row-major buffer (zero rows past the
// end). The microkernel keeps a kMR x kNR tile of C in registers, broadcasting one left element
// per row and loading one panel row per k.
//
// Fusion. Work is split into tiles of M rows; per tile the rank-space intermediate ([Mt, r],
// fp32) is produced into a buffer sized to stay in L2 and consumed at once, so it never goes to
// memory; bias, activation and the dtype conversion are applied in registers before the store.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "flashstream/common/simd.h"
#include "flashstream/lowrank/params.h"

namespace flashstream::lowrank::cpu {
inline namespace FLASHSTREAM_ISA {  // see simd.h: per-ISA symbols

using simd::vf;
inline constexpr int kL = simd::kLanes;
inline constexpr int kNV = 2;             // vectors per panel row
inline constexpr int kNR = kNV * kL;      // panel width: 32 (AVX-512), 16 (AVX2), 8 (SSE2)
inline constexpr int kMR = kL == 16 ? 12 : (kL == 8 ? 6 : 4);  // rows in registers: 24/12/8 accumulators
inline constexpr int64_t kKc = 128;       // k block of the left operand (the x block stays in L2)
inline constexpr int64_t kTileFloats = 32768;  // one rank-space tile: 128 KiB, an eighth of L2
inline constexpr int64_t kFfnTileCols = 128;   // d_ff columns per hidden tile (multiple of kNR)

// ---- packing ------------------------------------------------------------------------------------
inline int64_t packed_floats(int64_t K, int64_t N) { return round_up(N, kNR) * K; }

template <typename T>
void pack_panels(Strided src, int64_t K, int64_t N, float* out, int64_t panel_begin, int64_t panel_end) {
  const T* s = static_cast<const T*>(src.ptr);
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t n0 = p * kNR;
    const int64_t nc = N - n0 < kNR ? N - n0 : kNR;
    float* dst = out + p * K * kNR;
    for (int64_t k = 0; k < K; ++k) {
      float* row = dst + k * kNR;
      for (int64_t j = 0; j < nc; ++j) row[j] = to_float(s[src.offset(k, n0 + j)]);
      for (int64_t j = nc; j < kNR; ++j) row[j] = 0.0f;
    }
  }
}

// rows [m0, m0 + mt) x cols [k0, k0 + kc) of `src` -> buf (fp32, row stride ld); rows up to
// round_up(mt, kMR) are zero so the microkernel can always run kMR rows.
template <typename T>
void pack_rows(Strided src, int64_t m0, int64_t mt, int64_t k0, int64_t kc, float* buf, int64_t ld) {
  const T* s = static_cast<const T*>(src.ptr);
  for (int64_t i = 0; i < mt; ++i) {
    float* row = buf + i * ld;
    if (src.cs == 1) {
      const T* in = s + (m0 + i) * src.rs + k0;
      int64_t k = 0;
      for (; k + kL <= kc; k += kL) simd::store(row + k, simd::load(in + k));
      for (; k < kc; ++k) row[k] = to_float(in[k]);
    } else {
      for (int64_t k = 0; k < kc; ++k) row[k] = to_float(s[src.offset(m0 + i, k0 + k)]);
    }
  }
  for (int64_t i = mt; i < round_up(mt, kMR); ++i) std::memset(buf + i * ld, 0, kc * sizeof(float));
}

// ---- activations (vector forms of params.h's activate / activate_grad) ----------------------
// erfc(a) for a >= 0, fractional error < 1.2e-7 (Numerical Recipes' erfcc Chebyshev fit).
FS_INLINE vf erfc_nonneg(vf a) {
  const vf t = 1.0f / (1.0f + 0.5f * a);
  vf p = simd::splat(0.17087277f);
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * simd::exp(p - a * a);
}

// Phi(z) = P(N(0,1) <= z) = erfc(-z / sqrt 2) / 2, accurate in relative terms on both tails.
FS_INLINE vf normal_cdf(vf z) {
  const vf tail = 0.5f * erfc_nonneg(simd::abs(z) * kInvSqrt2);  // Phi(-|z|)
  return z < 0.0f ? tail : 1.0f - tail;
}

FS_INLINE vf sigmoid(vf z) { return 1.0f / (1.0f + simd::exp(-z)); }

FS_INLINE vf activate(Activation act, vf z) {
  switch (act) {
    case Activation::gelu: return z * normal_cdf(z);
    case Activation::silu: return z * sigmoid(z);
    default: return z;
  }
}

FS_INLINE vf activate_grad(Activation act, vf z) {
  switch (act) {
    case Activation::gelu: return normal_cdf(z) + z * kInvSqrt2Pi * simd::exp(-0.5f * z * z);
    case Activation::silu: {
      const vf s = sigmoid(z);
      return s * (1.0f + z * (1.0f - s));
    }
    default: return simd::splat(1.0f);
  }
}

// ---- microkernel ----------------------------------------------------------------------------
// One float from memory to every lane. simd::splat's lane loop compiles to a single broadcast in
// registers, but GCC turns it into a chain of masked broadcasts when the value comes from memory
// inside the unrolled loop below; the intrinsic is one vbroadcastss.
FS_INLINE vf broadcast(const float* p) {
#if defined(__AVX512F__)
  return (vf)_mm512_set1_ps(*p);
#elif defined(__AVX2__)
  return (vf)_mm256_broadcast_ss(p);
#else
  return simd::splat(*p);
#endif
}

// acc[i][v] = sum_k a[i * lda + k] * bp[k * kNR + v * kL + lanes], i < kMR.
// The accumulators are a local array copied out at the end: were `acc` itself used, its address
// (handed to the sink) would pin it to the stack and every FMA would store to memory.
FS_INLINE void microkernel(const float* __restrict a, int64_t lda, const float* __restrict bp, int64_t kc,
                           vf (&acc)[kMR][kNV]) {
  vf c[kMR][kNV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) c[i][v] = simd::splat(0.0f);
  for (int64_t k = 0; k < kc; ++k) {
    vf b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = simd::load(bp + k * kNR + v * kL);
    for (int i = 0; i < kMR; ++i) {
      const vf ai = broadcast(a + i * lda + k);
      for (int v = 0; v < kNV; ++v) c[i][v] = simd::fma(ai, b[v], c[i][v]);
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = c[i][v];
}

// C[mt, N] over a left block `a` (fp32 rows, stride lda, kc columns) times packed panels starting
// at `bp` (panel stride bstride floats, already offset to the block's first k): sink(row, col,
// acc) per kMR x kNR tile. Panel-outer so a panel stays in L1 while the row block streams from L2.
template <typename Sink>
FS_INLINE void block_product(const float* a, int64_t lda, int64_t mt, int64_t kc, const float* bp, int64_t bstride,
                             int64_t N, Sink&& sink) {
  vf acc[kMR][kNV];
  for (int64_t p = 0; p * kNR < N; ++p) {
    for (int64_t i0 = 0; i0 < mt; i0 += kMR) {
      microkernel(a + i0 * lda, lda, bp + p * bstride, kc, acc);
      sink(i0, p * kNR, acc);
    }
  }
}

// Sink: C (fp32, row stride ldc, every row of the kMR tile) = or += acc.
struct AccumulateSink {
  float* c;
  int64_t ldc;
  bool first;
  FS_INLINE void operator()(int64_t i0, int64_t n0, vf (&acc)[kMR][kNV]) const {
    for (int i = 0; i < kMR; ++i) {
      float* row = c + (i0 + i) * ldc + n0;
      for (int v = 0; v < kNV; ++v)
        simd::store(row + v * kL, first ? acc[i][v] : acc[i][v] + simd::load(row + v * kL));
    }
  }
};

// Where a product's result goes: out[m, n] (TO, row stride ldo) = act(z + bias[n]), or
// grad[m, n] * act'(z + bias[n]) (EpilogueMode::activation_grad). bias and grad are TB.
template <typename TO, typename TB>
struct Epilogue {
  TO* out;
  int64_t ldo;
  const TB* bias = nullptr;
  Activation act = Activation::none;
  EpilogueMode mode = EpilogueMode::forward;
  const TB* grad = nullptr;
  int64_t ldg = 0;
};

// Sink: the valid part (rows < mt, cols < N) of each tile through the epilogue, rows offset m0.
template <typename TO, typename TB>
struct EpilogueSink {
  const Epilogue<TO, TB>& e;
  int64_t m0, mt, N;
  FS_INLINE void operator()(int64_t i0, int64_t n0, vf (&acc)[kMR][kNV]) const {
    for (int v = 0; v < kNV; ++v) {
      const int64_t n = n0 + v * kL;
      if (n >= N) break;
      const bool full = N - n >= kL;
      alignas(64) TB tmp_b[kL];
      vf bias = simd::splat(0.0f);
      if (e.bias) {
        if (full) {
          bias = simd::load(e.bias + n);
        } else {
          std::memset(static_cast<void*>(tmp_b), 0, sizeof tmp_b);
          std::memcpy(static_cast<void*>(tmp_b), e.bias + n, (N - n) * sizeof(TB));
          bias = simd::load(tmp_b);
        }
      }
      for (int i = 0; i < kMR && i0 + i < mt; ++i) {
        const int64_t m = m0 + i0 + i;
        const vf z = acc[i][v] + bias;
        vf y;
        if (e.mode == EpilogueMode::activation_grad) {
          vf g;
          if (full) {
            g = simd::load(e.grad + m * e.ldg + n);
          } else {
            std::memset(static_cast<void*>(tmp_b), 0, sizeof tmp_b);
            std::memcpy(static_cast<void*>(tmp_b), e.grad + m * e.ldg + n, (N - n) * sizeof(TB));
            g = simd::load(tmp_b);
          }
          y = g * activate_grad(e.act, z);
        } else {
          y = activate(e.act, z);
        }
        TO* dst = e.out + m * e.ldo + n;
        if (full) {
          simd::store(dst, y);
        } else {
          alignas(64) TO tmp[kL];
          simd::store(tmp, y);
          std::memcpy(static_cast<void*>(dst), tmp, (N - n) * sizeof(TO));
        }
      }
    }
  }
};

// A per-call scratch buffer (aligned_alloc, not a std:: template: see simd.h on per-ISA symbols).
struct Scratch {
  float* p = nullptr;
  explicit Scratch(int64_t floats) {
    const size_t bytes = size_t(round_up(floats > 0 ? floats : 1, 16)) * sizeof(float);
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Rows per fused tile: the fp32 rank-space tiles (total width `width` floats per row) fit in
// kTileFloats; a multiple of kMR, at most 256. Smaller tiles (any multiple of kMR) are valid too.
inline int64_t tile_rows(int64_t width) {
  int64_t rows = kTileFloats / (width > 1 ? width : 1);
  rows = rows > 256 ? 256 : rows;
  rows = rows / kMR * kMR;
  return rows < kMR ? kMR : rows;
}

// left[m0:m0+mt, :K] @ packed (K x n) -> C (fp32, ldc), accumulated over k blocks; abuf holds
// round_up(mt, kMR) x kKc floats.
template <typename T>
void rows_times_packed(Strided left, int64_t m0, int64_t mt, int64_t K, const float* packed, int64_t n, float* c,
                       int64_t ldc, float* abuf) {
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kc = K - k0 < kKc ? K - k0 : kKc;
    pack_rows<T>(left, m0, mt, k0, kc, abuf, kKc);
    block_product(abuf, kKc, mt, kc, packed + k0 * kNR, K * kNR, n, AccumulateSink{c, ldc, k0 == 0});
  }
  if (K == 0) {
    for (int64_t i = 0; i < round_up(mt, kMR); ++i) std::memset(c + i * ldc, 0, round_up(n, kNR) * sizeof(float));
  }
}

// ---- lowrank_linear: y = epilogue(x A B), tiles [tile_begin, tile_end) of tile_rows(r) rows --------
template <typename T, typename TO>
void linear_tiles(const LinearProblem& p, const Epilogue<TO, T>& e, int64_t tile_begin, int64_t tile_end) {
  const int64_t mt_max = p.tile_rows > 0 ? p.tile_rows : tile_rows(round_up(p.r, kNR));
  const int64_t ldt = round_up(p.r, kNR);
  Scratch abuf(mt_max * kKc), tbuf(mt_max * ldt);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = t * mt_max;
    const int64_t mt = p.M - m0 < mt_max ? p.M - m0 : mt_max;
    rows_times_packed<T>(p.x, m0, mt, p.K, p.a_packed, p.r, tbuf.p, ldt, abuf.p);  // T = x A, fp32, in L2
    block_product(tbuf.p, ldt, mt, p.r, p.b_packed, p.r * kNR, p.N, EpilogueSink<TO, T>{e, m0, mt, p.N});
  }
}

// ---- lowrank_ffn / lowrank_gated_ffn (FfnProblem in params.h) -------------------------------------
// The [Mt, d_ff] hidden exists only kFfnTileCols columns at a time; its product with A2 is
// accumulated in rank space (S [Mt, r2], fp32) tile by tile, then S B2 gives the output rows.
inline int64_t ffn_tile_rows(const FfnProblem& p) {
  const int64_t width = round_up(p.r1, kNR) + round_up(p.r2, kNR) + kFfnTileCols +
                        (p.gated ? round_up(p.r1u, kNR) + kFfnTileCols : 0);
  return tile_rows(width);
}

template <typename T>
void ffn_tiles(const FfnProblem& p, T* y, int64_t tile_begin, int64_t tile_end) {
  const T* b1 = static_cast<const T*>(p.bias1);
  const T* b2 = static_cast<const T*>(p.bias2);
  const int64_t mt_max = p.tile_rows > 0 ? p.tile_rows : ffn_tile_rows(p);
  const int64_t ld1 = round_up(p.r1, kNR), ld2 = round_up(p.r2, kNR), ldu = round_up(p.r1u, kNR);
  const int64_t ldh = kFfnTileCols;
  Scratch abuf(mt_max * kKc), pbuf(mt_max * ld1), sbuf(mt_max * ld2), hbuf(mt_max * ldh);
  Scratch ubuf(p.gated ? mt_max * ldu : 0), hubuf(p.gated ? mt_max * ldh : 0);
  std::memset(hbuf.p, 0, mt_max * ldh * sizeof(float));  // rows past mt are read, never stored
  if (p.gated) std::memset(hubuf.p, 0, mt_max * ldh * sizeof(float));
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = t * mt_max;
    const int64_t mt = p.M - m0 < mt_max ? p.M - m0 : mt_max;
    rows_times_packed<T>(p.x, m0, mt, p.K, p.a1p, p.r1, pbuf.p, ld1, abuf.p);
    if (p.gated) rows_times_packed<T>(p.x, m0, mt, p.K, p.aup, p.r1u, ubuf.p, ldu, abuf.p);
    for (int64_t d0 = 0; d0 < p.d_ff; d0 += kFfnTileCols) {
      const int64_t dc = p.d_ff - d0 < kFfnTileCols ? p.d_ff - d0 : kFfnTileCols;
      const int64_t first_panel = d0 / kNR;
      if (!p.gated) {
        const Epilogue<float, T> he{hbuf.p, ldh, b1 ? b1 + d0 : nullptr, p.act};
        block_product(pbuf.p, ld1, mt, p.r1, p.b1p + first_panel * p.r1 * kNR, p.r1 * kNR, dc,
                      EpilogueSink<float, T>{he, 0, mt, dc});
      } else {
        const Epilogue<float, T> gate{hbuf.p, ldh}, up{hubuf.p, ldh};
        block_product(pbuf.p, ld1, mt, p.r1, p.b1p + first_panel * p.r1 * kNR, p.r1 * kNR, dc,
                      EpilogueSink<float, T>{gate, 0, mt, dc});
        block_product(ubuf.p, ldu, mt, p.r1u, p.bup + first_panel * p.r1u * kNR, p.r1u * kNR, dc,
                      EpilogueSink<float, T>{up, 0, mt, dc});
        for (int64_t i = 0; i < mt; ++i) {
          float* g = hbuf.p + i * ldh;
          const float* u = hubuf.p + i * ldh;
          for (int64_t j = 0; j < round_up(dc, kL); j += kL)
            simd::store(g + j, activate(p.act, simd::load(g + j)) * simd::load(u + j));
        }
      }
      // S (+)= H[:, :dc] A2[d0:d0+dc, :]
      block_product(hbuf.p, ldh, mt, dc, p.a2p + d0 * kNR, p.d_ff * kNR, p.r2, AccumulateSink{sbuf.p, ld2, d0 == 0});
    }
    if (p.d_ff == 0) std::memset(sbuf.p, 0, mt_max * ld2 * sizeof(float));
    const Epilogue<T, T> ye{y, p.N, p.gated ? nullptr : b2};
    block_product(sbuf.p, ld2, mt, p.r2, p.b2p, p.r2 * kNR, p.N, EpilogueSink<T, T>{ye, m0, mt, p.N});
  }
}

// ---- generic product for the backward: out = epilogue(left @ packed), left any strides ------------
template <typename TL, typename TO, typename T>
void gemm_tiles(Strided left, int64_t M, int64_t K, const float* packed, int64_t N, const Epilogue<TO, T>& e,
                int64_t tile_rows_, int64_t tile_begin, int64_t tile_end) {
  const int64_t ldc = round_up(N, kNR);
  Scratch abuf(tile_rows_ * kKc), cbuf(tile_rows_ * ldc);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = t * tile_rows_;
    const int64_t mt = M - m0 < tile_rows_ ? M - m0 : tile_rows_;
    rows_times_packed<TL>(left, m0, mt, K, packed, N, cbuf.p, ldc, abuf.p);
    // the epilogue over C: an identity "product" would cost a pass anyway; apply it row-vector-wise
    for (int64_t i0 = 0; i0 < mt; i0 += kMR) {
      for (int64_t n0 = 0; n0 < N; n0 += kNR) {
        vf acc[kMR][kNV];
        for (int i = 0; i < kMR; ++i)
          for (int v = 0; v < kNV; ++v) acc[i][v] = simd::load(cbuf.p + (i0 + i) * ldc + n0 + v * kL);
        EpilogueSink<TO, T>{e, m0, mt, N}(i0, n0, acc);
      }
    }
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::lowrank::cpu
