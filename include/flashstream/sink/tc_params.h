// Sink attention on tensor cores (bf16 / fp16, mma.sync m16n8k16, fp32 accumulation): the tiling,
// shared-memory layout, fragment / row maps and dispatch rule of include/flashstream/sink/
// cuda_tc.cuh, torch-free and host-testable (tests/cuda_emu/sink_tc_emu.cpp checks coverage, bank
// conflicts and the rule, and runs the kernel on the host).
//
// A CTA of 4 warps owns kRows = 64 rows, row = (query, GQA group head) as in the SIMT kernel
// (cuda.cuh): a tile of qpb queries x hpb group heads, row r = (r / nh, r % nh) with nh the heads
// of the tile. Warp w owns rows [16 w, 16 w + 16): one m16 tile. Keys come in blocks of kKeys = 64
// through the page table by cp.async (double-buffered), are rotated in place at the frame's
// position (params.h) in fp32 and rounded to the dtype (as the queries, scaled and rotated into
// the frame): S = Q K^T on tensor cores, the visibility mask per (row, key), softcap and an fp32
// online softmax in registers, then P (rounded to the dtype) times V, V fragments by ldmatrix.trans.
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"
#include "flashstream/common/mma_frag.h"
#include "flashstream/sink/params.h"

namespace flashstream::sink::tc {

inline constexpr int kWarps = 4;
inline constexpr int kThreads = kWarps * 32;
inline constexpr int kRows = 16 * kWarps;  // rows per CTA, one m16 tile per warp
inline constexpr int kKeys = 64;           // keys per block iteration: 8 n8 tiles of S, 4 k16 steps of P V
// Row padding (halves): a row of 16 B more moves the next row by 4 banks, so the 8 rows of 16 B
// that one ldmatrix phase reads hit 32 distinct banks (D = 64: 144 B rows; 128: 272 B).
inline constexpr int kPad = 8;

// Group heads and queries per CTA for a GQA group of g heads (as cuda.cuh, with 64 rows).
FS_HOST_DEVICE constexpr int64_t heads_per_block(int64_t g) { return g < kRows ? g : kRows; }
FS_HOST_DEVICE constexpr int64_t queries_per_block(int64_t g) { return kRows / heads_per_block(g); }

inline constexpr int kStages = 2;  // key blocks double-buffered: cp.async of block i + 1 during block i
inline constexpr int kVec = 8;     // halves per 16-byte cp.async

// Shared memory of the D-wide kernel, in bytes from the (16-byte aligned) base:
//   Q [kRows][ld] (the current frame's) | K [kStages][kKeys][ld] | V [kStages][kKeys][ld]  (halves)
//   inverse frequencies [D / 2] (fp64) | Visible [kRows] | range [3] (int64)
// 89 KB at D = 128: within the 99 KB a block may opt into on every sm_80+ GPU (sm_86 / sm_89).
template <int D_>
struct Layout {
  static constexpr int D = D_;
  static_assert(D == 64 || D == 128, "head dims of the tensor-core kernel: see use_tensor_cores");
  static constexpr int ld = D + kPad;  // halves per row of Q, K, V
  static constexpr int q_bytes = kRows * ld * 2, kv_bytes = kKeys * ld * 2;
  static constexpr int q_offset = 0;
  FS_HOST_DEVICE static constexpr int k_offset(int s) { return q_bytes + s * kv_bytes; }
  FS_HOST_DEVICE static constexpr int v_offset(int s) { return q_bytes + (kStages + s) * kv_bytes; }
  static constexpr int freq_offset = q_bytes + 2 * kStages * kv_bytes;
  static constexpr int vis_offset = freq_offset + (D / 2) * 8;
  static constexpr int range_offset = vis_offset + kRows * int(sizeof(Visible));
  static constexpr int bytes = range_offset + 3 * 8;
  static_assert(ld % kVec == 0 && q_bytes % 16 == 0 && kv_bytes % 16 == 0, "rows 16 B aligned for ldmatrix / cp.async");
  static_assert(sizeof(Visible) == 24, "Visible: three int64");
};

// Key-block copies: thread t copies row copy_row(t) of K (t < kKeys) or of V, D / kVec pieces of 16
// bytes in order; an 8-lane phase then writes piece c of 8 consecutive rows, 4 banks apart (ld).
static_assert(kThreads == 2 * kKeys, "one thread per K row and one per V row of a key block");
FS_HOST_DEVICE constexpr int copy_row(int tid) { return tid % kKeys; }
FS_HOST_DEVICE constexpr bool copy_is_v(int tid) { return tid >= kKeys; }

// The rows a lane's accumulators hold (i = 0: c0, c1; i = 1: c2, c3) within its CTA, and the key of
// accumulator e (0..3) of n8 tile nt within a key block.
FS_HOST_DEVICE constexpr int lane_row(int warp, int lane, int i) { return 16 * warp + mma::frag_c_row(lane, 2 * i); }
FS_HOST_DEVICE constexpr int lane_key(int nt, int lane, int e) { return 8 * nt + mma::frag_c_col(lane, e); }

// S = Q K^T takes K as the mma's "col" B operand as it lies in shared memory ([key][d]): ldmatrix
// .x4 without .trans, lane addresses (key, d) of 16 keys x 16 dims (mma_frag.h ldsm_bt_*). P V
// takes V [key][d] as a row-major [k][n] B operand: ldmatrix .x4.trans (ldsm_b_*).
FS_HOST_DEVICE constexpr int ldsm_k_key(int lane) { return mma::ldsm_bt_n(lane); }
FS_HOST_DEVICE constexpr int ldsm_k_dim(int lane) { return mma::ldsm_bt_k(lane); }

// The dispatch rule: the tensor-core kernel runs sink attention when the dtype is bf16 or fp16,
// the GPU is sm_80 or newer (cc = 10 * major + minor), D is 64 or 128, the keys are not split
// (the kernel has no split-KV; the binding asks with splits = 1 and, when the rule holds, does not
// split: split-KV is for decode, few rows and long caches, the SIMT kernel's case) and
// there are at least kRows rows (T * G): a CTA computes all 64 rows of its tile whatever it holds,
// so below one full tile the SIMT kernel's 16-row blocks waste less; from 64 rows on, each key
// block's scores and P V take 2 x 8 x D / 16 mma.sync per warp instead of one fp32 FMA per
// (row, key, dim). Everything else (fp32, other D, decode, split-KV, older GPUs, key rows not
// 16-byte aligned) is the SIMT kernel.
// Key rows are copied by 16-byte cp.async, so k and v (and the pools, when there is a cache) must
// start 16-byte aligned (rows of 64 / 128 halves then are); torch's allocations are, views at
// odd offsets may not be (rows_aligned false: the SIMT kernel).
FS_HOST_DEVICE FS_INLINE bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
FS_HOST_DEVICE FS_INLINE bool key_rows_aligned(const void* k, const void* v, const void* k_pool, const void* v_pool) {
  return aligned16(k) && aligned16(v) && aligned16(k_pool) && aligned16(v_pool);  // null is aligned
}

FS_HOST_DEVICE constexpr bool use_tensor_cores(bool half_dtype, int cc, int64_t D, int64_t splits, int64_t T,
                                               int64_t G, bool rows_aligned) {
  return half_dtype && cc >= 80 && (D == 64 || D == 128) && splits == 1 && T * G >= kRows && rows_aligned;
}

}  // namespace flashstream::sink::tc
