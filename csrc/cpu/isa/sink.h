// The sink-cache CPU kernel table, one instance per compiled ISA (csrc/cpu/isa/sink.cpp). Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/common/dtype.h"
#include "flashstream/sink/args.h"

namespace flashstream::cpu {

struct SinkCpuKernels {
  // Work items [begin, end) of B * Hkv * query tiles * a.splits; scratch: sink::cpu::attend_scratch_floats.
  void (*attend)(DType dtype, const sink::AttnArgs& a, int64_t begin, int64_t end, float* scratch);
  // Split-KV finish of rows [begin, end) of B * T * Hq (a.splits > 1).
  void (*merge)(DType dtype, const sink::AttnArgs& a, int64_t begin, int64_t end);
  // (stream, kv head) pairs [begin, end) of B * Hkv; tmp: D floats. Does not advance lengths.
  void (*append)(DType dtype, const sink::AppendArgs& a, int64_t begin, int64_t end, float* tmp);
};

namespace isa_baseline { const SinkCpuKernels& sink_kernels(); }
namespace isa_avx2 { const SinkCpuKernels& sink_kernels(); }
namespace isa_avx512 { const SinkCpuKernels& sink_kernels(); }

}  // namespace flashstream::cpu
