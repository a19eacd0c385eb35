#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>

namespace flashstream::cpu {
namespace {

bool compiled(Isa isa) {
  switch (isa) {
    case Isa::baseline: return true;
#if defined(FLASHSTREAM_HAS_ISA_avx2)
    case Isa::avx2: return true;
#endif
#if defined(FLASHSTREAM_HAS_ISA_avx512)
    case Isa::avx512: return true;
#endif
    default: return false;
  }
}

bool supported(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::baseline: return true;
    case Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
  return false;
#else
  return isa == Isa::baseline;
#endif
}

bool parse(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512}) {
    if (name == isa_name(isa)) { *out = isa; return true; }
  }
  return false;
}

Isa detect() {
  Isa best = Isa::baseline;
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (isa_available(isa)) best = isa;
  }
  if (const char* env = std::getenv("FLASHSTREAM_CPU_ISA")) {
    Isa wanted;
    if (parse(env, &wanted) && isa_available(wanted) && int(wanted) <= int(best)) best = wanted;
  }
  return best;
}

std::atomic<int>& active() {
  static std::atomic<int> isa{int(detect())};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::baseline: return "baseline";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

bool isa_available(Isa isa) { return compiled(isa) && supported(isa); }

Isa active_isa() { return Isa(active().load(std::memory_order_relaxed)); }

bool set_isa(const std::string& name) {
  Isa isa;
  if (!parse(name, &isa) || !isa_available(isa)) return false;
  active().store(int(isa), std::memory_order_relaxed);
  return true;
}

std::string available_isas() {
  std::string out;
  for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    if (!out.empty()) out += ',';
    out += isa_name(isa);
  }
  return out;
}

}  // namespace flashstream::cpu
