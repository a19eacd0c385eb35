// The FSQ CPU kernel table, one instance per compiled ISA (csrc/cpu/isa/fsq.cpp). Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/common/dtype.h"
#include "flashstream/fsq/params.h"

namespace flashstream::cpu {

struct FsqCpuKernels {
  // Vectors [begin, end) of z [n, d]; returns true if one held a NaN.
  bool (*forward)(DType dtype, const fsq::Params& p, const void* z, void* codes, int64_t* indices,
                  int64_t begin, int64_t end);
  void (*backward)(DType dtype, const fsq::Params& p, const void* grad_codes, const void* z, void* grad_z,
                   int64_t begin, int64_t end);
  // Returns how many indices in [begin, end) were out of range.
  int64_t (*indices_to_codes)(DType dtype, const fsq::Params& p, const int64_t* indices, void* codes,
                              int64_t begin, int64_t end);
};

namespace isa_baseline { const FsqCpuKernels& fsq_kernels(); }
namespace isa_avx2 { const FsqCpuKernels& fsq_kernels(); }
namespace isa_avx512 { const FsqCpuKernels& fsq_kernels(); }

}  // namespace flashstream::cpu
