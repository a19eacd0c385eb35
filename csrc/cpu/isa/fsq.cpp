// Instantiates the FSQ CPU kernels (include/flashstream/fsq/cpu.h) for the ISA this translation
// unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/fsq.h"

#include "flashstream/fsq/cpu.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {
namespace {

template <typename T>
bool forward_t(const fsq::Params& p, const void* z, void* codes, int64_t* indices, int64_t begin, int64_t end) {
  fsq::cpu::LaneTables tables;
  fsq::cpu::make_lane_tables(p, &tables);
  return fsq::cpu::forward(p, tables, static_cast<const T*>(z), static_cast<T*>(codes), indices, begin, end);
}

template <typename T>
void backward_t(const fsq::Params& p, const void* g, const void* z, void* gz, int64_t begin, int64_t end) {
  fsq::cpu::LaneTables tables;
  fsq::cpu::make_lane_tables(p, &tables);
  fsq::cpu::backward(p, tables, static_cast<const T*>(g), static_cast<const T*>(z), static_cast<T*>(gz), begin, end);
}

bool forward(DType dt, const fsq::Params& p, const void* z, void* codes, int64_t* indices, int64_t b, int64_t e) {
  switch (dt) {
    case DType::f16: return forward_t<f16_t>(p, z, codes, indices, b, e);
    case DType::bf16: return forward_t<bf16_t>(p, z, codes, indices, b, e);
    default: return forward_t<float>(p, z, codes, indices, b, e);
  }
}

void backward(DType dt, const fsq::Params& p, const void* g, const void* z, void* gz, int64_t b, int64_t e) {
  switch (dt) {
    case DType::f16: return backward_t<f16_t>(p, g, z, gz, b, e);
    case DType::bf16: return backward_t<bf16_t>(p, g, z, gz, b, e);
    default: return backward_t<float>(p, g, z, gz, b, e);
  }
}

int64_t indices_to_codes(DType dt, const fsq::Params& p, const int64_t* idx, void* codes, int64_t b, int64_t e) {
  switch (dt) {
    case DType::f16: return fsq::cpu::indices_to_codes(p, idx, static_cast<f16_t*>(codes), b, e);
    case DType::bf16: return fsq::cpu::indices_to_codes(p, idx, static_cast<bf16_t*>(codes), b, e);
    default: return fsq::cpu::indices_to_codes(p, idx, static_cast<float*>(codes), b, e);
  }
}

}  // namespace

const FsqCpuKernels& fsq_kernels() {
  static const FsqCpuKernels table{&forward, &backward, &indices_to_codes};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
