// lowrank_linear on tensor cores (bf16 / fp16, mma.sync m16n8k16, fp32 accumulation): the
// tiling, shared-memory layout, fragment maps and dispatch rule of include/flashstream/lowrank/
// cuda_tc.cuh, torch-free and host-testable (tests/cuda_emu/lowrank_tc_emu.cpp checks tile
// coverage, bank conflicts and the rule, and runs the kernel on the host).
//
// Per CTA a block of BM rows (128 or 64, block_rows); 8 warps as 4 (rows) x 2 (columns) over each product's tile:
//   stage 1: T = x[BM, K] A[K, RB] over k chunks of kBK, accumulators in registers, then rounded
//            to the op's dtype into shared memory T[BM][RB] (as the unfused bf16/fp16 chain
//            rounds x @ A); RB = r rounded up to 64 / 128 / 256, the padding columns are zero.
//   stage 2: per kBN-column tile of N, y = act(T B[:, tile] + bias), over k chunks of kBK of r.
// x/A chunks (stage 1) and B chunks (stage 2) are cp.async double-buffered; stage 2 reuses the
// staging buffers of stage 1, T has its own region.
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"
#include "flashstream/common/mma_frag.h"
#include "flashstream/lowrank/params.h"

namespace flashstream::lowrank::tc {

inline constexpr int kThreads = 256;
inline constexpr int kWarpsM = 4, kWarpsN = 2;  // warp grid over every product's output tile
inline constexpr int kBK = 32;                  // k per staged chunk: two m16n8k16 k-steps
inline constexpr int kBN = 128;                 // stage 2: output columns per tile
inline constexpr int kStages = 2;               // cp.async double buffering
inline constexpr int kVec = 8;                  // halves per 16-byte cp.async
// Row padding (halves) of every shared buffer: a row of 16 B more moves the next row by 4 banks,
// so the 8 rows of 16 B that one ldmatrix phase reads hit 32 distinct banks, and rows stay 16 B
// aligned.
inline constexpr int kPad = 8;
inline constexpr int64_t kMaxRank = 256;  // larger ranks stay on the SIMT kernel (shared memory)

// The compile-time width of T for rank r: 64, 128 or 256.
FS_HOST_DEVICE constexpr int rank_bucket(int64_t r) { return r <= 64 ? 64 : r <= 128 ? 128 : 256; }
// Rows per CTA: 128 when the rank bucket is <= 128 (stage 1 then holds at most 64 fp32
// accumulators a thread) and there are enough rows for a block per multiprocessor; else 64, so
// that mid-sized M (the M = 8192 is 64 blocks of 128 on 132 H100 SMs) spreads wider.
FS_HOST_DEVICE constexpr int block_rows(int rb, int64_t M, int multiprocessors) {
  return rb <= 128 && ceil_div(M, 128) >= multiprocessors ? 128 : 64;
}

// Shared memory in halves (uint16): [staging | T]. Staging holds kStages x (x chunk, A chunk) in
// stage 1 and kStages x B chunk in stage 2.
template <int BM_, int RB>
struct Layout {
  static constexpr int BM = BM_;
  static_assert(BM == 64 || (BM == 128 && RB <= 128), "block rows: see block_rows");
  static constexpr int ldx = kBK + kPad;  // x chunk [BM][ldx]
  static constexpr int lda = RB + kPad;   // A chunk [kBK][lda]
  static constexpr int ldb = kBN + kPad;  // B chunk [kBK][ldb]
  static constexpr int ldt = RB + kPad;   // T [BM][ldt]
  static constexpr int x_stage = BM * ldx;
  static constexpr int a_stage = kBK * lda;
  static constexpr int b_stage = kBK * ldb;
  static constexpr int stage1 = kStages * (x_stage + a_stage);
  static constexpr int stage2 = kStages * b_stage;
  static constexpr int staging = stage1 > stage2 ? stage1 : stage2;
  static constexpr int halves = staging + BM * ldt;
  static constexpr int bytes = halves * 2;
  FS_HOST_DEVICE static constexpr int x_offset(int s) { return s * x_stage; }
  FS_HOST_DEVICE static constexpr int a_offset(int s) { return kStages * x_stage + s * a_stage; }
  FS_HOST_DEVICE static constexpr int b_offset(int s) { return s * b_stage; }
  static constexpr int t_offset = staging;
  // Warp tiles: wm rows (mi m16 tiles) in both stages; wn1 / wn2 columns (nj1 / nj2 n8 tiles, even).
  static constexpr int wm = BM / kWarpsM, mi = wm / 16;
  static constexpr int wn1 = RB / kWarpsN, nj1 = wn1 / 8;
  static constexpr int wn2 = kBN / kWarpsN, nj2 = wn2 / 8;
  static_assert(wm % 16 == 0 && wn1 % 16 == 0 && wn2 % 16 == 0, "warp tiles are whole mma tiles, n8 tiles in pairs");
  static_assert(ldx % kVec == 0 && lda % kVec == 0 && ldb % kVec == 0 && ldt % kVec == 0, "rows 16 B aligned");
};

// The v-th 16-byte piece of an x chunk [BM][kBK]: each 8-lane phase of a warp's shared stores
// takes one column piece of 8 rows (ldx = 20 words apart: 8 disjoint bank quads); row-major
// order would put two rows 80 B apart in one phase and collide on 4 banks. A warp still reads
// 8 whole 64-byte row pieces from global memory.
static_assert(kBK / kVec == 4, "x pieces: 4 per row");
FS_HOST_DEVICE constexpr int x_piece_row(int v) { return (v / 32) * 8 + v % 8; }
FS_HOST_DEVICE constexpr int x_piece_col(int v) { return ((v / 8) % 4) * kVec; }

// Fragment maps of mma.sync.m16n8k16 / ldmatrix: common/mma_frag.h (shared with sink attention).
using mma::frag_c_col;
using mma::frag_c_row;
using mma::ldsm_a_col;
using mma::ldsm_a_row;
using mma::ldsm_b_k;
using mma::ldsm_b_n;

// Operands as the dispatch rule sees them: element pointer, strides in elements.
struct Operand {
  const void* ptr = nullptr;
  int64_t rs = 0, cs = 1;
};

FS_HOST_DEVICE FS_INLINE bool aligned(const void* p, uint64_t bytes) {
  return (reinterpret_cast<uint64_t>(p) % bytes) == 0;
}

// A row-major operand whose rows can be read in 16-byte cp.async pieces.
FS_HOST_DEVICE FS_INLINE bool vector_rows(const Operand& o) {
  return o.cs == 1 && o.rs % kVec == 0 && aligned(o.ptr, 16);
}

// The dispatch rule: the tensor-core kernel runs lowrank_linear's forward when the dtype is
// bf16 or fp16, the GPU is sm_80 or newer (cc = 10 * major + minor), 1 <= r <= 256, K, r and N
// are multiples of 8, x, A and B are row-major (unit column stride) with row strides multiples
// of 8 and 16-byte aligned base pointers, and y is 16-byte aligned with N columns. M is any.
// Everything else (fp32, r > 256, odd shapes or strides, older GPUs) takes the SIMT kernel of
// cuda.cuh. The backward uses the rule too, for grad_x = (G B^T) A^T (factors B^T, A^T copied
// row-major); its other products and the activation-gradient epilogue stay on the SIMT kernels.
FS_HOST_DEVICE FS_INLINE bool use_tensor_cores(bool half_dtype, int cc, int64_t M, int64_t K, int64_t r, int64_t N,
                                               const Operand& x, const Operand& a, const Operand& b,
                                               const void* out) {
  if (!half_dtype || cc < 80) return false;
  if (M < 1 || K < 1 || N < 1 || r < 1 || r > kMaxRank) return false;
  if (K % kVec != 0 || r % kVec != 0 || N % kVec != 0) return false;
  return vector_rows(x) && vector_rows(a) && vector_rows(b) && aligned(out, 16);
}

}  // namespace flashstream::lowrank::tc
