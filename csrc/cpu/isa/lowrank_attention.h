// The low-rank attention CPU kernel table, one instance per compiled ISA
// (csrc/cpu/isa/lowrank_attention.cpp). Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/attention_params.h"

namespace flashstream::cpu {

struct LowrankAttentionCpuKernels {
  // Rows [begin, end) of Din: A32 = [Aq | Ak | Av] in fp32, zero-padded.
  void (*widen_factors)(DType dtype, const lowrank::AttnArgs& a, int64_t begin, int64_t end);
  // Rows [begin, end) of B * S: P = x A32; scratch: lowrank::cpu::project_scratch_floats.
  void (*project)(DType dtype, const lowrank::AttnArgs& a, int64_t begin, int64_t end, float* scratch);
  // Work items [begin, end) of B * H * ceil(S / tile); scratch: lowrank::cpu::attend_scratch_floats.
  void (*attend)(DType dtype, const lowrank::AttnArgs& a, int64_t begin, int64_t end, float* scratch);
};

namespace isa_baseline { const LowrankAttentionCpuKernels& lowrank_attention_kernels(); }
namespace isa_avx2 { const LowrankAttentionCpuKernels& lowrank_attention_kernels(); }
namespace isa_avx512 { const LowrankAttentionCpuKernels& lowrank_attention_kernels(); }

}  // namespace flashstream::cpu
