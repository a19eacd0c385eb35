// Instantiates the low-rank attention CPU kernels (include/flashstream/lowrank/attention_cpu.h) for
// the ISA this translation unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/lowrank_attention.h"

#include "flashstream/lowrank/attention_cpu.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {
namespace {

namespace k = lowrank::cpu;

void widen_factors(DType dt, const lowrank::AttnArgs& a, int64_t begin, int64_t end) {
  switch (dt) {
    case DType::f16: return k::widen_factors<f16_t>(a, begin, end);
    case DType::bf16: return k::widen_factors<bf16_t>(a, begin, end);
    default: return k::widen_factors<float>(a, begin, end);
  }
}

void project(DType dt, const lowrank::AttnArgs& a, int64_t begin, int64_t end, float* scratch) {
  switch (dt) {
    case DType::f16: return k::project<f16_t>(a, begin, end, scratch);
    case DType::bf16: return k::project<bf16_t>(a, begin, end, scratch);
    default: return k::project<float>(a, begin, end, scratch);
  }
}

void attend(DType dt, const lowrank::AttnArgs& a, int64_t begin, int64_t end, float* scratch) {
  switch (dt) {
    case DType::f16: return k::attend<f16_t>(a, begin, end, scratch);
    case DType::bf16: return k::attend<bf16_t>(a, begin, end, scratch);
    default: return k::attend<float>(a, begin, end, scratch);
  }
}

}  // namespace

const LowrankAttentionCpuKernels& lowrank_attention_kernels() {
  static const LowrankAttentionCpuKernels table{&widen_factors, &project, &attend};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
