// Instantiates the low-rank CPU kernels (include/flashstream/lowrank/cpu.h) for the ISA this
// translation unit is compiled for (FLASHSTREAM_ISA; see CMakeLists.txt).
#include "cpu/isa/lowrank.h"

#include "flashstream/lowrank/cpu.h"

#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)

namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA) {
namespace {

namespace lr = ::flashstream::lowrank;
namespace lc = ::flashstream::lowrank::cpu;

template <typename Fn>
void by_dtype(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::f16: return fn(f16_t{});
    case DType::bf16: return fn(bf16_t{});
    default: return fn(float{});
  }
}

template <typename TO, typename T>
lc::Epilogue<TO, T> typed(const lr::EpilogueArgs& e) {
  return {static_cast<TO*>(e.out), e.ldo, static_cast<const T*>(e.bias), e.act, e.mode,
          static_cast<const T*>(e.grad), e.ldg};
}

int64_t packed_floats(int64_t K, int64_t N) { return lc::packed_floats(K, N); }
int64_t panel_width() { return lc::kNR; }

void pack(DType dt, lr::Strided src, int64_t K, int64_t N, float* out, int64_t pb, int64_t pe) {
  by_dtype(dt, [&](auto t) { lc::pack_panels<decltype(t)>(src, K, N, out, pb, pe); });
}

int64_t row_block() { return lc::kMR; }

int64_t linear_tile_rows(int64_t r) { return lc::tile_rows(lr::round_up(r, lc::kNR)); }

void linear(DType dt, const lr::LinearProblem& p, const lr::EpilogueArgs& e, int64_t tb, int64_t te) {
  by_dtype(dt, [&](auto t) {
    using T = decltype(t);
    if (e.out_f32) {
      lc::linear_tiles<T, float>(p, typed<float, T>(e), tb, te);
    } else {
      lc::linear_tiles<T, T>(p, typed<T, T>(e), tb, te);
    }
  });
}

int64_t ffn_tile_rows(const lr::FfnProblem& p) { return lc::ffn_tile_rows(p); }

void ffn(DType dt, const lr::FfnProblem& p, void* y, int64_t tb, int64_t te) {
  by_dtype(dt, [&](auto t) {
    using T = decltype(t);
    lc::ffn_tiles<T>(p, static_cast<T*>(y), tb, te);
  });
}

#if defined(FS_BF16_TARGET)
bool has_bf16_dot() { return lc::has_bf16_dot(); }
int64_t packed_pairs(int64_t K, int64_t N) { return lc::packed_pairs_u16(K, N); }
void pack_pairs(lr::Strided src, int64_t K, int64_t N, uint16_t* out, int64_t pb, int64_t pe) {
  lc::pack_panels_bf16(src, K, N, out, pb, pe);
}
void linear_bf16(const lr::LinearProblem& p, const uint16_t* ap, const uint16_t* bp, const lr::EpilogueArgs& e,
                 int64_t tb, int64_t te) {
  if (e.out_f32) {
    lc::linear_tiles_bf16<float>(p, ap, bp, typed<float, bf16_t>(e), tb, te);
  } else {
    lc::linear_tiles_bf16<bf16_t>(p, ap, bp, typed<bf16_t, bf16_t>(e), tb, te);
  }
}
void ffn_bf16(const lr::FfnProblem& p, const uint16_t* const* pairs, void* y, int64_t tb, int64_t te) {
  const lc::FfnPairs f{pairs[0], pairs[1], pairs[2], pairs[3], pairs[4], pairs[5]};
  lc::ffn_tiles_bf16(p, f, static_cast<bf16_t*>(y), tb, te);
}
#else
void ffn_bf16(const lr::FfnProblem&, const uint16_t* const*, void*, int64_t, int64_t) {}
bool has_bf16_dot() { return false; }
int64_t packed_pairs(int64_t, int64_t) { return 0; }
void pack_pairs(lr::Strided, int64_t, int64_t, uint16_t*, int64_t, int64_t) {}
void linear_bf16(const lr::LinearProblem&, const uint16_t*, const uint16_t*, const lr::EpilogueArgs&, int64_t, int64_t) {}
#endif

int64_t gemm_tile_rows(int64_t N) { return lc::tile_rows(lr::round_up(N, lc::kNR)); }

void gemm(DType dt, bool left_f32, lr::Strided left, int64_t M, int64_t K, const float* packed, int64_t N,
          const lr::EpilogueArgs& e, int64_t tiles, int64_t tb, int64_t te) {
  by_dtype(dt, [&](auto t) {
    using T = decltype(t);
    auto run = [&](auto left_t, auto out_t) {
      using TL = decltype(left_t);
      using TO = decltype(out_t);
      lc::gemm_tiles<TL, TO, T>(left, M, K, packed, N, typed<TO, T>(e), tiles, tb, te);
    };
    if (left_f32) {
      e.out_f32 ? run(float{}, float{}) : run(float{}, T{});
    } else {
      e.out_f32 ? run(T{}, float{}) : run(T{}, T{});
    }
  });
}

}  // namespace

const LowrankCpuKernels& lowrank_kernels() {
  static const LowrankCpuKernels table{&packed_floats, &panel_width, &pack, &row_block, &linear_tile_rows, &linear,
                                       &ffn_tile_rows, &ffn, &has_bf16_dot, &packed_pairs, &pack_pairs, &linear_bf16,
                                       &ffn_bf16, &gemm_tile_rows, &gemm};
  return table;
}

}  // namespace flashstream::cpu::FS_CAT(isa_, FLASHSTREAM_ISA)
