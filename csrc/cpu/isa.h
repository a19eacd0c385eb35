// Run-time choice among the instruction sets the CPU kernels were compiled for (CMakeLists.txt
// builds csrc/cpu/isa/*.cpp once per ISA). Torch-free.
#pragma once
#include <string>

namespace flashstream::cpu {

enum class Isa : int { baseline = 0, avx2 = 1, avx512 = 2 };

// The widest ISA that is both compiled in and supported by this CPU, unless overridden by
// FLASHSTREAM_CPU_ISA=baseline|avx2|avx512 or set_isa (tests use it to exercise every variant).
Isa active_isa();
const char* isa_name(Isa isa);
bool isa_available(Isa isa);
// Returns false (and changes nothing) for an unknown name or an ISA this machine can't run.
bool set_isa(const std::string& name);
// Comma-separated ISAs available on this machine, e.g. "baseline,avx2,avx512".
std::string available_isas();

}  // namespace flashstream::cpu

// Kernel tables are selected with this: isa_baseline::fn() is always compiled in.
#if defined(FLASHSTREAM_HAS_ISA_avx512)
#define FS_ISA_CASE_AVX512(fn) case ::flashstream::cpu::Isa::avx512: return isa_avx512::fn();
#else
#define FS_ISA_CASE_AVX512(fn)
#endif
#if defined(FLASHSTREAM_HAS_ISA_avx2)
#define FS_ISA_CASE_AVX2(fn) case ::flashstream::cpu::Isa::avx2: return isa_avx2::fn();
#else
#define FS_ISA_CASE_AVX2(fn)
#endif
#define FS_SELECT_ISA(fn)                         \
  switch (::flashstream::cpu::active_isa()) {     \
    FS_ISA_CASE_AVX512(fn)                        \
    FS_ISA_CASE_AVX2(fn)                          \
    default: return isa_baseline::fn();           \
  }
