// Instantiates the sink-cache CPU kernels (include/flashstream/sink/cpu.h) for the ISA this
// translation unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/sink.h"

#include "flashstream/sink/cpu.h"
#include "flashstream/sink/cpu_append.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {
namespace {

void attend(DType dt, const sink::AttnArgs& a, int64_t begin, int64_t end, float* scratch) {
  switch (dt) {
    case DType::f16: return sink::cpu::attend<f16_t>(a, begin, end, scratch);
    case DType::bf16: return sink::cpu::attend<bf16_t>(a, begin, end, scratch);
    default: return sink::cpu::attend<float>(a, begin, end, scratch);
  }
}

void merge(DType dt, const sink::AttnArgs& a, int64_t begin, int64_t end) {
  switch (dt) {
    case DType::f16: return sink::cpu::merge_splits<f16_t>(a, begin, end);
    case DType::bf16: return sink::cpu::merge_splits<bf16_t>(a, begin, end);
    default: return sink::cpu::merge_splits<float>(a, begin, end);
  }
}

void append(DType dt, const sink::AppendArgs& a, int64_t begin, int64_t end, float* tmp) {
  switch (dt) {
    case DType::f16: return sink::cpu::append<f16_t>(a, begin, end, tmp);
    case DType::bf16: return sink::cpu::append<bf16_t>(a, begin, end, tmp);
    default: return sink::cpu::append<float>(a, begin, end, tmp);
  }
}

}  // namespace

const SinkCpuKernels& sink_kernels() {
  static const SinkCpuKernels table{&attend, &merge, &append};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
