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
  const vf t = simd::reciprocal(1.0f + 0.5f * a);  // ~1 ulp, a fraction of a division's cost
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

// Phi(z) to an absolute error below 2e-6 in half the operations of normal_cdf, for 16-bit ops,
// whose outputs round at 4e-3 (bf16) or 5e-4 (fp16) relative: erfc(a) = P(a)^-16 with P the
// degree-6 polynomial of Abramowitz & Stegun 7.1.28 (|error| <= 3e-7 in exact arithmetic; the
// 16th power multiplies P's fp32 rounding by 16). a is capped where P^16 would overflow; erfc
// is below 1e-40 there already.
FS_INLINE vf normal_cdf_16bit(vf z) {
  const vf a = simd::min(simd::abs(z) * kInvSqrt2, simd::splat(10.0f));
  vf p = simd::splat(4.30638e-5f);
  p = p * a + 2.765672e-4f;
  p = p * a + 1.520143e-4f;
  p = p * a + 9.2705272e-3f;
  p = p * a + 4.22820123e-2f;
  p = p * a + 7.05230784e-2f;
  p = p * a + 1.0f;
  p = p * p;
  p = p * p;
  p = p * p;
  p = p * p;
  const vf tail = 0.5f * simd::reciprocal(p);  // Phi(-|z|)
  return z < 0.0f ? tail : 1.0f - tail;
}

FS_INLINE vf sigmoid(vf z) { return simd::reciprocal(1.0f + simd::exp(-z)); }

// low_precision: the op's dtype is 16-bit (GELU through normal_cdf_16bit).
FS_INLINE vf activate(Activation act, vf z, bool low_precision = false) {
  switch (act) {
    case Activation::gelu: return z * (low_precision ? normal_cdf_16bit(z) : normal_cdf(z));
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
using simd::broadcast;

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

// y[i] = act(acc[i][v] + bias) for every row of a tile's column vector v. One switch, then kMR
// independent chains with no branch between them, so out-of-order execution overlaps them: GELU
// is ~25 dependent operations, which one row at a time would leave latency-bound.
template <bool kLowPrecision>
FS_INLINE void activate_column(Activation act, const vf (&acc)[kMR][kNV], int v, vf bias, vf (&y)[kMR]) {
  switch (act) {
    case Activation::gelu:
      for (int i = 0; i < kMR; ++i) y[i] = activate(Activation::gelu, acc[i][v] + bias, kLowPrecision);
      break;
    case Activation::silu:
      for (int i = 0; i < kMR; ++i) y[i] = activate(Activation::silu, acc[i][v] + bias);
      break;
    default:
      for (int i = 0; i < kMR; ++i) y[i] = acc[i][v] + bias;
  }
}

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
      const int rows = mt - i0 < kMR ? int(mt - i0) : kMR;
      vf y[kMR];
      if (e.mode == EpilogueMode::activation_grad) {
        for (int i = 0; i < rows; ++i) {
          const TB* gp = e.grad + (m0 + i0 + i) * e.ldg + n;
          vf g;
          if (full) {
            g = simd::load(gp);
          } else {
            std::memset(static_cast<void*>(tmp_b), 0, sizeof tmp_b);
            std::memcpy(static_cast<void*>(tmp_b), gp, (N - n) * sizeof(TB));
            g = simd::load(tmp_b);
          }
          y[i] = g * activate_grad(e.act, acc[i][v] + bias);
        }
      } else {
        activate_column<sizeof(TB) == 2>(e.act, acc, v, bias, y);
      }
      for (int i = 0; i < rows; ++i) {
        TO* dst = e.out + (m0 + i0 + i) * e.ldo + n;
        if (full) {
          simd::store(dst, y[i]);
        } else {
          alignas(64) TO tmp[kL];
          simd::store(tmp, y[i]);
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

// p.tiles of M rows (the binding's task_tiles; RowTiles). Scratch is sized by the largest tile,
// so any count is valid; the binding picks one that keeps tiles L2-sized.
inline RowTiles row_tiles(int64_t M, int64_t tiles) { return RowTiles{M, kMR, tiles > 0 ? tiles : 1}; }

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

// ---- lowrank_linear: y = epilogue(x A B), row tiles [tile_begin, tile_end) (p.tiles) ----------------
template <typename T, typename TO>
void linear_tiles(const LinearProblem& p, const Epilogue<TO, T>& e, int64_t tile_begin, int64_t tile_end) {
  const RowTiles rt = row_tiles(p.M, p.tiles);
  const int64_t mt_max = rt.max_rows();
  const int64_t ldt = round_up(p.r, kNR);
  Scratch abuf(mt_max * kKc), tbuf(mt_max * ldt);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = rt.begin(t);
    const int64_t mt = rt.begin(t + 1) - m0;
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
  const RowTiles rt = row_tiles(p.M, p.tiles);
  const int64_t mt_max = rt.max_rows();
  const int64_t ld1 = round_up(p.r1, kNR), ld2 = round_up(p.r2, kNR), ldu = round_up(p.r1u, kNR);
  const int64_t ldh = kFfnTileCols;
  Scratch abuf(mt_max * kKc), pbuf(mt_max * ld1), sbuf(mt_max * ld2), hbuf(mt_max * ldh);
  Scratch ubuf(p.gated ? mt_max * ldu : 0), hubuf(p.gated ? mt_max * ldh : 0);
  std::memset(hbuf.p, 0, mt_max * ldh * sizeof(float));  // rows past mt are read, never stored
  if (p.gated) std::memset(hubuf.p, 0, mt_max * ldh * sizeof(float));
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = rt.begin(t);
    const int64_t mt = rt.begin(t + 1) - m0;
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
            simd::store(g + j, activate(p.act, simd::load(g + j), sizeof(T) == 2) * simd::load(u + j));
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

// ---- bf16 x bf16 -> fp32 dot products (AVX512-BF16), lowrank_linear's bf16 path ------------------
// vdpbf16ps does 32 bf16 products per instruction (twice the fp32 FMA rate). Only functions
// marked FS_BF16_TARGET use it, so the avx512 build still runs on AVX-512 CPUs without BF16; the
// caller checks has_bf16_dot() first. Right-hand panels hold k pairs interleaved per column
// (packed[((panel * K2 + kp) * kNR + j) * 2 + h] = op(2 kp + h, panel * kNR + j), K2 = ceil(K/2),
// zero past the end); left rows are bf16 with an even number of columns. The rank-space T is
// rounded to bf16 before the second product, as the unfused bf16 chain rounds x @ A.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define FS_BF16_TARGET __attribute__((target("avx512bf16,avx512vl,avx512bw,avx512dq,avx512f")))
inline constexpr bool kBf16DotCompiled = true;

inline bool has_bf16_dot() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

// k block of the bf16 left operand: as many bytes per row as kKc fp32 columns
inline constexpr int64_t kKc16 = 2 * kKc;

inline int64_t packed_pairs_u16(int64_t K, int64_t N) { return round_up(N, kNR) * round_up(K, 2); }

inline void pack_panels_bf16(Strided src, int64_t K, int64_t N, uint16_t* out, int64_t panel_begin, int64_t panel_end) {
  const bf16_t* s = static_cast<const bf16_t*>(src.ptr);
  const int64_t K2 = ceil_div(K, 2);
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t n0 = p * kNR;
    const int64_t nc = N - n0 < kNR ? N - n0 : kNR;
    uint16_t* dst = out + p * K2 * kNR * 2;
    for (int64_t kp = 0; kp < K2; ++kp) {
      uint16_t* row = dst + kp * kNR * 2;
      for (int64_t j = 0; j < kNR; ++j)
        for (int h = 0; h < 2; ++h) {
          const int64_t k = 2 * kp + h;
          row[j * 2 + h] = (j < nc && k < K) ? s[src.offset(k, n0 + j)].bits : uint16_t(0);
        }
    }
  }
}

// acc = left rows (bf16, stride lda elements) . packed pairs, over kp_count k pairs.
FS_BF16_TARGET FS_INLINE void microkernel_bf16(const uint16_t* __restrict a, int64_t lda, const uint16_t* __restrict bp,
                                               int64_t kp_count, vf (&acc)[kMR][kNV]) {
  __m512 c[kMR][kNV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) c[i][v] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < kp_count; ++kp) {
    __m512bh b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(bp + (kp * kNR + v * kL) * 2);
    for (int i = 0; i < kMR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + 2 * kp, 4);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < kNV; ++v) c[i][v] = _mm512_dpbf16_ps(c[i][v], ai, b[v]);
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = (vf)c[i][v];
}

// C[mt, N] = left rows (bf16 pairs) . packed pair panels, sink(row, col, acc) per kMR x kNR tile.
// Panels go in chunks of chunk_panels, row groups outer within a chunk: with 1 (narrow outputs),
// a panel stays in L1 while the rows stream from L2; a wide output (the rank-space tile times B)
// takes wide_chunk(bstride), so the left rows stay in L1 while the chunk streams from L2 and each
// output row is written as one run per chunk.
template <typename Sink>
FS_BF16_TARGET FS_INLINE void block_product_bf16(const uint16_t* a, int64_t lda, int64_t mt, int64_t kp_count,
                                                 const uint16_t* bp, int64_t bstride, int64_t N, Sink&& sink,
                                                 int64_t chunk_panels = 1) {
  vf acc[kMR][kNV];
  const int64_t panels = ceil_div(N, kNR);
  for (int64_t p0 = 0; p0 < panels; p0 += chunk_panels) {
    const int64_t p1 = p0 + chunk_panels < panels ? p0 + chunk_panels : panels;
    for (int64_t i0 = 0; i0 < mt; i0 += kMR) {
      for (int64_t p = p0; p < p1; ++p) {
        microkernel_bf16(a + i0 * lda, lda, bp + p * bstride, kp_count, acc);
        sink(i0, p * kNR, acc);
      }
    }
  }
}

// Panels of bstride pairs per chunk of a wide output: 256 KiB of B at a time.
inline int64_t wide_chunk(int64_t bstride) {
  const int64_t chunk = 256 * 1024 / (bstride * int64_t(sizeof(uint16_t)));
  return chunk < 1 ? 1 : chunk;
}

// rows [m0, m0 + mt) x cols [k0, k0 + kc) of bf16 `src` -> buf (row stride ld, even), zero-padded to
// an even column count and to round_up(mt, kMR) rows.
inline void pack_rows_bf16(Strided src, int64_t m0, int64_t mt, int64_t k0, int64_t kc, uint16_t* buf, int64_t ld,
                           int64_t K) {
  const bf16_t* s = static_cast<const bf16_t*>(src.ptr);
  const int64_t kc2 = round_up(kc, 2);
  const int64_t next_end = K - (k0 + kc) < kKc16 ? K : k0 + kc + kKc16;
  for (int64_t i = 0; i < mt; ++i) {
    uint16_t* row = buf + i * ld;
    if (src.cs == 1) {
      // the next block's columns of this row towards L2 while this block is multiplied: the
      // product is short enough that a block fetched on demand stalls it
      const char* ahead = reinterpret_cast<const char*>(s + (m0 + i) * src.rs);
      for (int64_t k = k0 + kc; k < next_end; k += 32) _mm_prefetch(ahead + 2 * k, _MM_HINT_T1);
      // a whole block is a constant-size copy, expanded inline; a variable-size memcpy becomes
      // `rep movsq`, whose start-up cost dominates copies this short
      const bf16_t* in = s + (m0 + i) * src.rs + k0;
      if (kc == kKc16) {
        std::memcpy(row, in, kKc16 * sizeof(uint16_t));
      } else {
        std::memcpy(row, in, kc * sizeof(uint16_t));
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) row[k] = s[src.offset(m0 + i, k0 + k)].bits;
    }
    if (kc2 > kc) row[kc] = 0;
  }
  for (int64_t i = mt; i < round_up(mt, kMR); ++i) std::memset(buf + i * ld, 0, kc2 * sizeof(uint16_t));
}

// fp32 rows (stride ld) -> bf16 rows (stride ld16, even), rounded to nearest even, zero past cols.
inline void round_rows_bf16(const float* src, int64_t ld, int64_t rows, int64_t cols, uint16_t* dst, int64_t ld16) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = src + i * ld;
    uint16_t* d = dst + i * ld16;
    int64_t j = 0;
    for (; j + kL <= cols; j += kL) simd::store(reinterpret_cast<bf16_t*>(d + j), simd::load(s + j));
    for (; j < ld16; ++j) d[j] = j < cols ? from_float<bf16_t>(s[j]).bits : uint16_t(0);
  }
}

template <typename TO>
FS_BF16_TARGET void linear_tiles_bf16(const LinearProblem& p, const uint16_t* a_pairs, const uint16_t* b_pairs,
                                      const Epilogue<TO, bf16_t>& e, int64_t tile_begin, int64_t tile_end) {
  const RowTiles rt = row_tiles(p.M, p.tiles);
  const int64_t mt_max = rt.max_rows();
  const int64_t ldt = round_up(p.r, kNR);
  const int64_t ldt16 = round_up(p.r, 2);
  const int64_t r2 = ceil_div(p.r, 2);
  Scratch abuf(mt_max * kKc16 / 2 + 16), tbuf(mt_max * ldt), t16(mt_max * ldt16 / 2 + 16);
  uint16_t* a16 = reinterpret_cast<uint16_t*>(abuf.p);
  uint16_t* tb16 = reinterpret_cast<uint16_t*>(t16.p);
  const int64_t K2 = ceil_div(p.K, 2);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = rt.begin(t);
    const int64_t mt = rt.begin(t + 1) - m0;
    for (int64_t k0 = 0; k0 < p.K; k0 += kKc16) {  // T = x A (fp32 accumulators across k blocks)
      const int64_t kc = p.K - k0 < kKc16 ? p.K - k0 : kKc16;
      pack_rows_bf16(p.x, m0, mt, k0, kc, a16, kKc16, p.K);
      block_product_bf16(a16, kKc16, mt, ceil_div(kc, 2), a_pairs + (k0 / 2) * kNR * 2, K2 * kNR * 2, p.r,
                         AccumulateSink{tbuf.p, ldt, k0 == 0});
    }
    if (p.K == 0) std::memset(tbuf.p, 0, mt_max * ldt * sizeof(float));
    round_rows_bf16(tbuf.p, ldt, round_up(mt, kMR), p.r, tb16, ldt16);  // T -> bf16 (round to nearest even)
    block_product_bf16(tb16, ldt16, mt, r2, b_pairs, r2 * kNR * 2, p.N, EpilogueSink<TO, bf16_t>{e, m0, mt, p.N},
                       wide_chunk(r2 * kNR * 2));
  }
}

// lowrank_ffn / lowrank_gated_ffn in bf16 on dot products: as ffn_tiles, with every left operand
// (P, the hidden tile H, S) rounded to bf16 before its product, as the unfused bf16 chain rounds
// each intermediate. Factors come as k-pair panels: a1 (K x r1), b1 (r1 x d_ff), a2 (d_ff x r2),
// b2 (r2 x N), au, bu (gated).
struct FfnPairs {
  const uint16_t *a1, *b1, *a2, *b2, *au, *bu;
};

// out (fp32, ld) = left[m0:m0+mt, :K] (bf16) @ pairs (K x n); x16 holds round_up(mt, kMR) x kKc16.
FS_BF16_TARGET inline void rows_times_pairs(Strided left, int64_t m0, int64_t mt, int64_t K, const uint16_t* pairs,
                                            int64_t n, float* out, int64_t ld, uint16_t* x16, int64_t rows_pad) {
  const int64_t K2 = ceil_div(K, 2);
  for (int64_t k0 = 0; k0 < K; k0 += kKc16) {
    const int64_t kc = K - k0 < kKc16 ? K - k0 : kKc16;
    pack_rows_bf16(left, m0, mt, k0, kc, x16, kKc16, K);
    block_product_bf16(x16, kKc16, mt, ceil_div(kc, 2), pairs + (k0 / 2) * kNR * 2, K2 * kNR * 2, n,
                       AccumulateSink{out, ld, k0 == 0});
  }
  if (K == 0) std::memset(out, 0, rows_pad * ld * sizeof(float));
}

FS_BF16_TARGET inline void ffn_tiles_bf16(const FfnProblem& p, const FfnPairs& f, bf16_t* y, int64_t tile_begin,
                                          int64_t tile_end) {
  const RowTiles rt = row_tiles(p.M, p.tiles);
  const int64_t mt_max = rt.max_rows();
  const int64_t ld1 = round_up(p.r1, kNR), ld2 = round_up(p.r2, kNR), ldu = round_up(p.r1u, kNR);
  const int64_t ldh = kFfnTileCols;
  const int64_t r1p = ceil_div(p.r1, 2), r2p = ceil_div(p.r2, 2), rup = ceil_div(p.r1u, 2);
  const int64_t dff2 = ceil_div(p.d_ff, 2);
  // fp32 accumulators and their bf16 roundings (uint16 halves of float-sized scratch)
  Scratch x16(mt_max * kKc16 / 2 + 16), pbuf(mt_max * ld1), p16(mt_max * ld1 / 2 + 16), sbuf(mt_max * ld2),
      s16(mt_max * ld2 / 2 + 16), hbuf(mt_max * ldh), h16(mt_max * ldh / 2 + 16);
  Scratch ubuf(p.gated ? mt_max * ldu : 0), u16(p.gated ? mt_max * ldu / 2 + 16 : 0), hubuf(p.gated ? mt_max * ldh : 0);
  auto u16p = [](Scratch& s) { return reinterpret_cast<uint16_t*>(s.p); };
  std::memset(hbuf.p, 0, mt_max * ldh * sizeof(float));
  std::memset(h16.p, 0, (mt_max * ldh / 2 + 16) * sizeof(float));
  if (p.gated) std::memset(hubuf.p, 0, mt_max * ldh * sizeof(float));
  const int64_t rows_pad = round_up(mt_max, kMR);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = rt.begin(t);
    const int64_t mt = rt.begin(t + 1) - m0;
    const int64_t rows = round_up(mt, kMR);
    rows_times_pairs(p.x, m0, mt, p.K, f.a1, p.r1, pbuf.p, ld1, u16p(x16), rows_pad);
    round_rows_bf16(pbuf.p, ld1, rows, p.r1, u16p(p16), 2 * r1p);
    if (p.gated) {
      rows_times_pairs(p.x, m0, mt, p.K, f.au, p.r1u, ubuf.p, ldu, u16p(x16), rows_pad);
      round_rows_bf16(ubuf.p, ldu, rows, p.r1u, u16p(u16), 2 * rup);
    }
    for (int64_t d0 = 0; d0 < p.d_ff; d0 += kFfnTileCols) {
      const int64_t dc = p.d_ff - d0 < kFfnTileCols ? p.d_ff - d0 : kFfnTileCols;
      const int64_t first_panel = d0 / kNR;
      if (!p.gated) {
        const Epilogue<float, bf16_t> he{hbuf.p, ldh, static_cast<const bf16_t*>(p.bias1) ? static_cast<const bf16_t*>(p.bias1) + d0 : nullptr, p.act};
        block_product_bf16(u16p(p16), 2 * r1p, mt, r1p, f.b1 + first_panel * r1p * kNR * 2, r1p * kNR * 2, dc,
                           EpilogueSink<float, bf16_t>{he, 0, mt, dc});
      } else {
        const Epilogue<float, bf16_t> gate{hbuf.p, ldh}, up{hubuf.p, ldh};
        block_product_bf16(u16p(p16), 2 * r1p, mt, r1p, f.b1 + first_panel * r1p * kNR * 2, r1p * kNR * 2, dc,
                           EpilogueSink<float, bf16_t>{gate, 0, mt, dc});
        block_product_bf16(u16p(u16), 2 * rup, mt, rup, f.bu + first_panel * rup * kNR * 2, rup * kNR * 2, dc,
                           EpilogueSink<float, bf16_t>{up, 0, mt, dc});
        for (int64_t i = 0; i < mt; ++i) {
          float* g = hbuf.p + i * ldh;
          const float* u = hubuf.p + i * ldh;
          for (int64_t j = 0; j < round_up(dc, kL); j += kL)
            simd::store(g + j, activate(p.act, simd::load(g + j), true) * simd::load(u + j));
        }
      }
      round_rows_bf16(hbuf.p, ldh, mt, dc, u16p(h16), ldh);  // columns >= dc are zero
      // S (+)= H[:, :dc] A2[d0:d0+dc, :]
      block_product_bf16(u16p(h16), ldh, mt, ceil_div(dc, 2), f.a2 + (d0 / 2) * kNR * 2, dff2 * kNR * 2, p.r2,
                         AccumulateSink{sbuf.p, ld2, d0 == 0});
    }
    if (p.d_ff == 0) std::memset(sbuf.p, 0, rows_pad * ld2 * sizeof(float));
    round_rows_bf16(sbuf.p, ld2, rows, p.r2, u16p(s16), 2 * r2p);
    const Epilogue<bf16_t, bf16_t> ye{y, p.N, p.gated ? nullptr : static_cast<const bf16_t*>(p.bias2)};
    block_product_bf16(u16p(s16), 2 * r2p, mt, r2p, f.b2, r2p * kNR * 2, p.N, EpilogueSink<bf16_t, bf16_t>{ye, m0, mt, p.N},
                       wide_chunk(r2p * kNR * 2));
  }
}
#else
inline constexpr bool kBf16DotCompiled = false;
#endif

// ---- generic product for the backward: out = epilogue(left @ packed), left any strides ------------
template <typename TL, typename TO, typename T>
void gemm_tiles(Strided left, int64_t M, int64_t K, const float* packed, int64_t N, const Epilogue<TO, T>& e,
                int64_t tiles, int64_t tile_begin, int64_t tile_end) {
  const int64_t ldc = round_up(N, kNR);
  const RowTiles rt = row_tiles(M, tiles);
  const int64_t mt_max = rt.max_rows();
  Scratch abuf(mt_max * kKc), cbuf(mt_max * ldc);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t m0 = rt.begin(t);
    const int64_t mt = rt.begin(t + 1) - m0;
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
