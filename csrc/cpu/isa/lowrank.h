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
  int64_t (*row_block)();  // tiles are runs of this many rows (the microkernel's; lowrank::RowTiles)
  int64_t (*linear_tile_rows)(int64_t r);  // the most rows per tile that keep its scratch in L2
  // lowrank_linear over row tiles [tile_begin, tile_end) of p.tiles; dtype is x's (and bias', grad's).
  void (*linear)(DType dtype, const lowrank::LinearProblem& p, const lowrank::EpilogueArgs& e, int64_t tile_begin,
                 int64_t tile_end);
  int64_t (*ffn_tile_rows)(const lowrank::FfnProblem& p);
  void (*ffn)(DType dtype, const lowrank::FfnProblem& p, void* y, int64_t tile_begin, int64_t tile_end);
  // bf16 lowrank_linear on AVX512-BF16 dot products, where compiled in and the CPU has them:
  // factors packed as k-pair panels (uint16 payloads), then the same tiles as `linear`.
  bool (*has_bf16_dot)();
  int64_t (*packed_pairs)(int64_t K, int64_t N);
  void (*pack_pairs)(lowrank::Strided src, int64_t K, int64_t N, uint16_t* out, int64_t panel_begin, int64_t panel_end);
  void (*linear_bf16)(const lowrank::LinearProblem& p, const uint16_t* a_pairs, const uint16_t* b_pairs,
                      const lowrank::EpilogueArgs& e, int64_t tile_begin, int64_t tile_end);
  // ffn over k-pair panels: pairs = {A1, B1, A2, B2, A_up, B_up} (the last two gated only)
  void (*ffn_bf16)(const lowrank::FfnProblem& p, const uint16_t* const* pairs, void* y, int64_t tile_begin,
                   int64_t tile_end);
  int64_t (*gemm_tile_rows)(int64_t N);
  // out = epilogue(left [M, K] @ packed [K, N]) over row tiles [tile_begin, tile_end) of `tiles`;
  // left is fp32 (left_f32) or dtype.
  void (*gemm)(DType dtype, bool left_f32, lowrank::Strided left, int64_t M, int64_t K, const float* packed,
               int64_t N, const lowrank::EpilogueArgs& e, int64_t tiles, int64_t tile_begin, int64_t tile_end);
};

namespace isa_baseline { const LowrankCpuKernels& lowrank_kernels(); }
namespace isa_avx2 { const LowrankCpuKernels& lowrank_kernels(); }
namespace isa_avx512 { const LowrankCpuKernels& lowrank_kernels(); }

}  // namespace flashstream::cpu
