// The MoD CPU kernel table, one instance per compiled ISA (csrc/cpu/isa/mod.cpp). Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/common/dtype.h"

namespace flashstream::cpu {

struct ModCpuKernels {
  // Rows [begin, end) of the flat [B * K] index array (see include/flashstream/mod/cpu.h).
  void (*gather)(DType dtype, const void* x, const int64_t* idx, void* out, int64_t K, int64_t T, int64_t D,
                 int64_t begin, int64_t end);
  void (*gather_rmsnorm)(DType dtype, const void* x, const int64_t* idx, const void* weight, float eps, void* out,
                         void* normed, int64_t K, int64_t T, int64_t D, int64_t begin, int64_t end);
  // output: `delta` is the block's output y (x + f), and kept rows get x + w * (y - x).
  void (*scatter)(DType dtype, bool output, const void* x, const void* delta, const int64_t* idx, const void* weights,
                  void* out, int64_t K, int64_t T, int64_t D, int64_t begin, int64_t end);
  // Route rows [begin, end) of scores [B, T]: marks keep [B, T] and kept [B]; returns true if some
  // row's routable group ids decrease.
  bool (*route_mark)(DType dtype, const void* scores, const int64_t* groups, const uint8_t* routable, int64_t T,
                     double capacity, uint8_t* keep, int64_t* kept, int64_t begin, int64_t end);
  // Writes indices / weights [B, K] for rows [begin, end) from the marks.
  void (*route_write)(DType dtype, const void* scores, const uint8_t* routable, const uint8_t* keep, int64_t T,
                      int64_t K, int64_t* indices, void* weights, int64_t begin, int64_t end);
};

namespace isa_baseline { const ModCpuKernels& mod_kernels(); }
namespace isa_avx2 { const ModCpuKernels& mod_kernels(); }
namespace isa_avx512 { const ModCpuKernels& mod_kernels(); }

}  // namespace flashstream::cpu
