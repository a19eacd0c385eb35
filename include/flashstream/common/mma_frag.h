// Fragment maps of mma.sync.m16n8k16 with 16-bit inputs and of ldmatrix.m8n8.x4, shared by the
// tensor-core kernels (lowrank/cuda_tc.cuh, sink/cuda_tc.cuh) and their host emulations. Plain
// C++, torch-free (PTX ISA, "Matrix Fragments for mma.m16n8k16"; lane = 4 * group + t).
//
// A (16 x 16) and B (16 x 8) come from shared memory by ldmatrix.m8n8, each lane giving the
// address of one 8-half row of one 8 x 8 matrix (lanes 8j..8j+7 matrix j). A, row-major [m][k],
// .x4: matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15), which land in the
// registers a0..a3 of the fragment. B, row-major [k][n], .x4.trans: (k 0-7, n 0-7), (k 8-15, n 0-7)
// give b0, b1 of one n8 tile, then the same for n 8-15, the next. B stored as [n][k] (the "col"
// operand as it lies, e.g. keys [key][d] for S = Q K^T), .x4 without .trans: (n 0-7, k 0-7),
// (n 0-7, k 8-15) give b0, b1 of one n8 tile, then the same for n 8-15.
#pragma once

#include "flashstream/common/macros.h"

namespace flashstream::mma {

FS_HOST_DEVICE constexpr int ldsm_a_row(int lane) { return lane % 16; }
FS_HOST_DEVICE constexpr int ldsm_a_col(int lane) { return (lane / 16) * 8; }
FS_HOST_DEVICE constexpr int ldsm_b_k(int lane) { return lane % 16; }
FS_HOST_DEVICE constexpr int ldsm_b_n(int lane) { return (lane / 16) * 8; }
FS_HOST_DEVICE constexpr int ldsm_bt_n(int lane) { return (lane / 16) * 8 + lane % 8; }  // [n][k] rows
FS_HOST_DEVICE constexpr int ldsm_bt_k(int lane) { return ((lane / 8) % 2) * 8; }
// Accumulator c_i of a lane: row, column of the 16 x 8 tile.
FS_HOST_DEVICE constexpr int frag_c_row(int lane, int i) { return lane / 4 + 8 * (i >> 1); }
FS_HOST_DEVICE constexpr int frag_c_col(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

}  // namespace flashstream::mma
