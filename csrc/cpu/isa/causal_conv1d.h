// The causal conv1d CPU kernel table, one instance per compiled ISA (csrc/cpu/isa/causal_conv1d.cpp).
// Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/common/dtype.h"
#include "flashstream/conv/params.h"

namespace flashstream::cpu {

struct CausalConv1dCpuKernels {
  // fp32 scratch floats each task needs (the caller allocates it, one buffer per thread).
  int64_t (*scratch_floats)(const conv::CausalConv1dParams& p);
  // Number of tasks for the layout: B*C rows (time-major) or B*ceil(C/block) blocks (channel-last).
  int64_t (*tasks)(const conv::CausalConv1dParams& p, bool channel_last);
  // Tasks [begin, end). x, w, bias, y share `dtype`; bias / state / indices may be null.
  void (*run)(DType dtype, bool channel_last, const conv::CausalConv1dParams& p, const void* x, const void* w,
              const void* bias, void* state, const int32_t* indices, void* y, float* scratch, int64_t begin,
              int64_t end);
};

namespace isa_baseline { const CausalConv1dCpuKernels& causal_conv1d_kernels(); }
namespace isa_avx2 { const CausalConv1dCpuKernels& causal_conv1d_kernels(); }
namespace isa_avx512 { const CausalConv1dCpuKernels& causal_conv1d_kernels(); }

}  // namespace flashstream::cpu
