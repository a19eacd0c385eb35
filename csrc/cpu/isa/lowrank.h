// The low-rank matmul CPU kernel table, one instance per compiled ISA (csrc/cpu/isa/lowrank.cpp).
// Torch-free. Packed panels are ISA-specific (their width is the ISA's), so a caller packs and
// multiplies through the same table.
#pragma once
#include <cstdint>

#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/params.h"

namespace flashstream::cpu {

struct LowrankCpuKernels {
  int64_t (*packed_floats)(int64_t K, int64_t N);
  int64_t (*panel_width)();
  // Panels [panel_begin, panel_end) of a right-hand operand src [K, N] (dtype) into `out`.
  void (*pack)(DType dtype, lowrank::Strided src, int64_t K, int64_t N, float* out, int64_t panel_begin,
               int64_t panel_end);
  int64_t (*row_block)();  // tile rows must be a multiple of this (the microkernel's rows)
  int64_t (*linear_tile_rows)(int64_t r);
  // lowrank_linear over row tiles [tile_begin, tile_end); dtype is x's (and bias', grad's).
  void (*linear)(DType dtype, const lowrank::LinearProblem& p, const lowrank::EpilogueArgs& e, int64_t tile_begin,
                 int64_t tile_end);
  int64_t (*ffn_tile_rows)(const lowrank::FfnProblem& p);
  void (*ffn)(DType dtype, const lowrank::FfnProblem& p, void* y, int64_t tile_begin, int64_t tile_end);
  int64_t (*gemm_tile_rows)(int64_t N);
  // out = epilogue(left [M, K] @ packed [K, N]) over row tiles; left is fp32 (left_f32) or dtype.
  void (*gemm)(DType dtype, bool left_f32, lowrank::Strided left, int64_t M, int64_t K, const float* packed,
               int64_t N, const lowrank::EpilogueArgs& e, int64_t tile_rows, int64_t tile_begin, int64_t tile_end);
};

namespace isa_baseline { const LowrankCpuKernels& lowrank_kernels(); }
namespace isa_avx2 { const LowrankCpuKernels& lowrank_kernels(); }
namespace isa_avx512 { const LowrankCpuKernels& lowrank_kernels(); }

}  // namespace flashstream::cpu
