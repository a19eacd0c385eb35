// Instantiates the sink-cache compaction CPU kernel (include/flashstream/sink/cpu_compact.h) for
// the ISA this translation unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/sink_compact.h"

#include "flashstream/sink/cpu_compact.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {

const SinkCompactCpuKernels& sink_compact_kernels() {
  static const SinkCompactCpuKernels table{&sink::cpu::compact};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
