// Fused low-rank matmul chains (K3): the math shared by the CPU and CUDA kernels. Torch-free.
//
//   lowrank_linear:     y = act(x A B + bias)                     x [M, K], A [K, r], B [r, N]
//   lowrank_ffn:        y = act(x A1 B1 + b1) A2 B2 + b2          hidden [M, d_ff] never stored
//   lowrank_gated_ffn:  y = (act(x Ag Bg) * (x Au Bu)) Ad Bd      (SwiGLU / GeGLU)
//
// Every product accumulates in fp32 whatever the storage dtype; rank-space intermediates
// ([M, r]) stay fp32 in a per-tile buffer (CPU: L2-sized tiles; GPU: shared memory).
#pragma once
#include <cmath>
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::lowrank {

inline constexpr int64_t kMaxRank = 512;  // rank-space tiles are sized for it (CPU L2, GPU smem)

enum class Activation : int { none = 0, gelu = 1, silu = 2 };

// What the epilogue of a product writes: out = act(z + bias), or, for the backward of
// lowrank_linear, out = grad * act'(z + bias) (the gradient at the pre-activation).
enum class EpilogueMode : int { forward = 0, activation_grad = 1 };

inline constexpr float kInvSqrt2 = 0.70710678118654752f;
inline constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// Exact (erf) GELU, as torch.nn.functional.gelu(approximate="none"); SiLU = x sigmoid(x).
FS_HOST_DEVICE FS_INLINE float activate(Activation act, float z) {
  switch (act) {
    case Activation::gelu: return 0.5f * z * (1.0f + erff(z * kInvSqrt2));
    case Activation::silu: return z / (1.0f + expf(-z));
    default: return z;
  }
}

// d act / dz.
FS_HOST_DEVICE FS_INLINE float activate_grad(Activation act, float z) {
  switch (act) {
    case Activation::gelu: return 0.5f * (1.0f + erff(z * kInvSqrt2)) + z * kInvSqrt2Pi * expf(-0.5f * z * z);
    case Activation::silu: {
      const float s = 1.0f / (1.0f + expf(-z));
      return s * (1.0f + z * (1.0f - s));
    }
    default: return 1.0f;
  }
}

FS_HOST_DEVICE FS_INLINE float epilogue(EpilogueMode mode, Activation act, float z, float grad) {
  return mode == EpilogueMode::activation_grad ? grad * activate_grad(act, z) : activate(act, z);
}

// A matrix operand read in place: element (i, j) at ptr[i * rs + j * cs] (any strides, so
// transposed views such as B^T and x^T need no copy; packing converts to fp32 anyway).
struct Strided {
  const void* ptr = nullptr;
  int64_t rs = 0, cs = 1;
  FS_HOST_DEVICE FS_INLINE int64_t offset(int64_t i, int64_t j) const { return i * rs + j * cs; }
};

// lowrank_linear's problem; the CPU path reads A and B from fp32 panels packed once per call
// (a_packed, b_packed), the CUDA path straight from a and b.
struct LinearProblem {
  Strided x;  // [M, K]
  int64_t M = 0, K = 0, r = 0, N = 0;
  Strided a, b;  // [K, r], [r, N]
  const float* a_packed = nullptr;
  const float* b_packed = nullptr;
  int64_t tiles = 0;  // CPU: the M rows as this many near-equal row tiles (RowTiles), set by the binding
};

// lowrank_ffn (gated = false): y = act(x A1 B1 + b1) A2 B2 + b2;
// lowrank_gated_ffn (gated = true): y = (act(x A1 B1) * (x Au Bu)) A2 B2 (b1, b2 unused).
struct FfnProblem {
  Strided x;
  int64_t M = 0, K = 0, r1 = 0, d_ff = 0, r2 = 0, N = 0, r1u = 0;
  bool gated = false;
  Activation act = Activation::none;
  Strided a1, b1, a2, b2, au, bu;             // the factors, [K, r1] [r1, d_ff] [d_ff, r2] [r2, N] [K, r1u] [r1u, d_ff]
  const float *a1p = nullptr, *b1p = nullptr, *a2p = nullptr, *b2p = nullptr, *aup = nullptr, *bup = nullptr;  // CPU packs
  const void* bias1 = nullptr;  // [d_ff] or null
  const void* bias2 = nullptr;  // [N] or null
  int64_t tiles = 0;            // CPU: as LinearProblem::tiles
};

// Where a product's result goes, type-erased: out[m * ldo + n] (the op's dtype, or fp32 when
// out_f32) = act(z + bias[n]), or grad[m * ldg + n] * act'(z + bias[n]). bias and grad have
// the op's dtype.
struct EpilogueArgs {
  void* out = nullptr;
  int64_t ldo = 0;
  bool out_f32 = false;
  const void* bias = nullptr;
  Activation act = Activation::none;
  EpilogueMode mode = EpilogueMode::forward;
  const void* grad = nullptr;
  int64_t ldg = 0;
};

FS_HOST_DEVICE FS_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FS_HOST_DEVICE FS_INLINE int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// M rows as `tiles` near-equal runs of whole `block`-row groups (block: the CPU microkernel's
// rows): tile t is rows [begin(t), begin(t + 1)), at most max_rows() of them. Equal tiles rather
// than equal-but-last, so threads given the same number of tiles get the same work.
struct RowTiles {
  int64_t M = 0, block = 1, tiles = 1;
  int64_t groups() const { return ceil_div(M, block); }
  int64_t begin(int64_t t) const {
    const int64_t row = groups() * t / tiles * block;
    return row < M ? row : M;
  }
  int64_t max_rows() const { return ceil_div(groups(), tiles) * block; }
};

}  // namespace flashstream::lowrank
