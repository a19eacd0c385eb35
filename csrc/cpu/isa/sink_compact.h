// The sink-cache compaction CPU kernel, one instance per compiled ISA (csrc/cpu/isa/sink_compact.cpp).
// Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/sink/compact.h"

namespace flashstream::cpu {

struct SinkCompactCpuKernels {
  // (stream, kv head) pairs [begin, end) of B * Hkv; indices already checked. Leaves lengths alone.
  void (*compact)(const sink::CompactArgs& a, int64_t begin, int64_t end);
};

namespace isa_baseline { const SinkCompactCpuKernels& sink_compact_kernels(); }
namespace isa_avx2 { const SinkCompactCpuKernels& sink_compact_kernels(); }
namespace isa_avx512 { const SinkCompactCpuKernels& sink_compact_kernels(); }

}  // namespace flashstream::cpu
