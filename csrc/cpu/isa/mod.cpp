// Instantiates the MoD CPU kernels (include/flashstream/mod/cpu.h, route_cpu.h) for the ISA this
// translation unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/mod.h"

#include "flashstream/mod/cpu.h"
#include "flashstream/mod/route_cpu.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {
namespace {

// Owns a heap array (no std:: templates in per-ISA code; see simd.h).
template <typename E>
struct Buffer {
  E* p;
  explicit Buffer(int64_t n) : p(new E[n]) {}
  ~Buffer() { delete[] p; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  E* get() const { return p; }
};

template <typename Fn>
void by_dtype(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::f16: return fn(f16_t{});
    case DType::bf16: return fn(bf16_t{});
    default: return fn(float{});
  }
}

void gather(DType dt, const void* x, const int64_t* idx, void* out, int64_t K, int64_t T, int64_t D, int64_t b,
            int64_t e) {
  by_dtype(dt, [&](auto v) {
    using V = decltype(v);
    mod::cpu::gather(static_cast<const V*>(x), idx, static_cast<V*>(out), K, T, D, b, e);
  });
}

void gather_rmsnorm(DType dt, const void* x, const int64_t* idx, const void* w, float eps, void* out, void* normed,
                    int64_t K, int64_t T, int64_t D, int64_t b, int64_t e) {
  by_dtype(dt, [&](auto v) {
    using V = decltype(v);
    mod::cpu::gather_rmsnorm(static_cast<const V*>(x), idx, static_cast<const V*>(w), eps, static_cast<V*>(out),
                             static_cast<V*>(normed), K, T, D, b, e);
  });
}

void scatter(DType dt, bool output, const void* x, const void* delta, const int64_t* idx, const void* weights,
             void* out, int64_t K, int64_t T, int64_t D, int64_t b, int64_t e) {
  by_dtype(dt, [&](auto v) {
    using V = decltype(v);
    const auto run = output ? &mod::cpu::scatter<true, V> : &mod::cpu::scatter<false, V>;
    run(static_cast<const V*>(x), static_cast<const V*>(delta), idx, static_cast<const V*>(weights),
        static_cast<V*>(out), K, T, D, b, e);
  });
}

bool route_mark(DType dt, const void* scores, const int64_t* groups, const uint8_t* routable, int64_t T,
                double capacity, uint8_t* keep, int64_t* kept, int64_t b, int64_t e) {
  bool decreasing = false;
  if (T == 0) {
    for (int64_t r = b; r < e; ++r) kept[r] = 0;
    return false;
  }
  // Per-task scratch: the keys, a copy for selection and the group's token list.
  Buffer<uint64_t> keys(2 * T);
  Buffer<int32_t> tok(T);
  by_dtype(dt, [&](auto v) {
    using V = decltype(v);
    for (int64_t r = b; r < e; ++r) {
      mod::cpu::RouteScratch s{keys.get(), keys.get() + T, tok.get(), keep + r * T};
      const int st = mod::cpu::route_row(static_cast<const V*>(scores) + r * T, groups ? groups + r * T : nullptr,
                                         routable ? routable + r * T : nullptr, T, capacity, s, kept + r);
      decreasing |= st == mod::cpu::kRouteGroupsDecrease;
    }
  });
  return decreasing;
}

void route_write(DType dt, const void* scores, const uint8_t* routable, const uint8_t* keep, int64_t T, int64_t K,
                 int64_t* indices, void* weights, int64_t b, int64_t e) {
  by_dtype(dt, [&](auto v) {
    using V = decltype(v);
    for (int64_t r = b; r < e; ++r)
      mod::cpu::write_row(static_cast<const V*>(scores) + r * T, routable ? routable + r * T : nullptr,
                          keep + r * T, T, K, indices + r * K, static_cast<V*>(weights) + r * K);
  });
}

}  // namespace

const ModCpuKernels& mod_kernels() {
  static const ModCpuKernels table{&gather, &gather_rmsnorm, &scatter, &route_mark, &route_write};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
