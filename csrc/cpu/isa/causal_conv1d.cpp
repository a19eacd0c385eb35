// Instantiates the causal conv1d CPU kernels (include/flashstream/conv/cpu.h) for the ISA this
// translation unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/causal_conv1d.h"

#include "flashstream/conv/cpu.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {
namespace {

using conv::CausalConv1dParams;

int64_t scratch_floats(const CausalConv1dParams& p) { return conv::cpu::scratch_floats(p); }

int64_t tasks(const CausalConv1dParams& p, bool channel_last) {
  if (!channel_last) return p.batch * p.channels;
  return p.batch * ((p.channels + conv::cpu::kBlockC - 1) / conv::cpu::kBlockC);
}

template <typename T>
void run_t(bool channel_last, const CausalConv1dParams& p, const void* x, const void* w, const void* bias,
           void* state, const int32_t* indices, void* y, float* scratch, int64_t begin, int64_t end) {
  const auto fn = channel_last ? &conv::cpu::channel_last<T> : &conv::cpu::time_major<T>;
  fn(p, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<T*>(state),
     indices, static_cast<T*>(y), scratch, begin, end);
}

void run(DType dt, bool channel_last, const CausalConv1dParams& p, const void* x, const void* w, const void* bias,
         void* state, const int32_t* indices, void* y, float* scratch, int64_t begin, int64_t end) {
  switch (dt) {
    case DType::f16: return run_t<f16_t>(channel_last, p, x, w, bias, state, indices, y, scratch, begin, end);
    case DType::bf16: return run_t<bf16_t>(channel_last, p, x, w, bias, state, indices, y, scratch, begin, end);
    default: return run_t<float>(channel_last, p, x, w, bias, state, indices, y, scratch, begin, end);
  }
}

}  // namespace

const CausalConv1dCpuKernels& causal_conv1d_kernels() {
  static const CausalConv1dCpuKernels table{&scratch_floats, &tasks, &run};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
