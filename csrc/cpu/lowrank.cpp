// Low-rank matmul chains on CPU: the shared checks (lowrank_args.h), the right-hand factors
// packed once per call into the ISA's fp32 panels (in parallel), then the fused kernels over
// at::parallel_for ranges of row tiles.
#include <algorithm>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/isa/lowrank.h"
#include "lowrank_args.h"

namespace flashstream::cpu {
namespace {

const LowrankCpuKernels& kernels() { FS_SELECT_ISA(lowrank_kernels) }

// src [K, N] (dtype, any strides) -> fp32 panels, a tensor owning them.
at::Tensor pack(const LowrankCpuKernels& k, DType dtype, lowrank::Strided src, int64_t K, int64_t N,
                const at::TensorOptions& opts) {
  at::Tensor out = at::empty({k.packed_floats(K, N)}, opts.dtype(at::kFloat));
  const int64_t panels = lowrank::ceil_div(N, k.panel_width());
  float* o = out.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, K * k.panel_width()));
  at::parallel_for(0, panels, grain, [&](int64_t b, int64_t e) { k.pack(dtype, src, K, N, o, b, e); });
  return out;
}

// Row tiles per call (lowrank::RowTiles): the fewest of at most the L2-sized rows, rounded up to
// a multiple of the thread count so that at::parallel_for hands every thread the same rows (M =
// 2048 in 252-row tiles would be 9 tiles, 5 on one thread, 4 on the other), and never more than
// the microkernel's row groups.
int64_t task_tiles(const LowrankCpuKernels& k, int64_t M, int64_t l2_rows) {
  const int64_t groups = lowrank::ceil_div(M, k.row_block());
  const int64_t l2_groups = std::max<int64_t>(1, l2_rows / k.row_block());
  const int64_t tiles = lowrank::round_up(lowrank::ceil_div(groups, l2_groups), at::get_num_threads());
  return std::max<int64_t>(1, std::min(tiles, groups));
}

// bf16 factors as k-pair panels for the AVX512-BF16 path.
at::Tensor pack_pairs(const LowrankCpuKernels& k, lowrank::Strided src, int64_t K, int64_t N, const at::TensorOptions& opts) {
  at::Tensor out = at::empty({k.packed_pairs(K, N)}, opts.dtype(at::kBFloat16));
  const int64_t panels = lowrank::ceil_div(N, k.panel_width());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.mutable_data_ptr());
  at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) { k.pack_pairs(src, K, N, o, b, e); });
  return out;
}

// lowrank_linear with p.a / p.b as given: packs them for the chosen path, then the row tiles.
void run_linear(const LowrankCpuKernels& k, DType dt, lowrank::LinearProblem p, const lowrank::EpilogueArgs& e,
                const at::TensorOptions& opts) {
  if (p.M == 0 || p.N == 0) return;
  p.tiles = task_tiles(k, p.M, k.linear_tile_rows(p.r));
  if (dt == DType::bf16 && k.has_bf16_dot()) {
    const at::Tensor ap = pack_pairs(k, p.a, p.K, p.r, opts);
    const at::Tensor bp = pack_pairs(k, p.b, p.r, p.N, opts);
    const auto* a16 = reinterpret_cast<const uint16_t*>(ap.const_data_ptr());
    const auto* b16 = reinterpret_cast<const uint16_t*>(bp.const_data_ptr());
    at::parallel_for(0, p.tiles, 1, [&](int64_t b, int64_t en) { k.linear_bf16(p, a16, b16, e, b, en); });
    return;
  }
  const at::Tensor ap = pack(k, dt, p.a, p.K, p.r, opts);
  const at::Tensor bp = pack(k, dt, p.b, p.r, p.N, opts);
  p.a_packed = ap.const_data_ptr<float>();
  p.b_packed = bp.const_data_ptr<float>();
  at::parallel_for(0, p.tiles, 1, [&](int64_t b, int64_t en) { k.linear(dt, p, e, b, en); });
}

at::Tensor lowrank_linear_cpu(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                              const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation) {
  const char* op = "lowrank_linear";
  LinearArgs a = linear_args(op, x, A, B, bias, activation);
  check_cpu(op, "x", x);
  at::Tensor y = at::empty(out_shape(x, a.p.N), x.options());
  if (a.p.M == 0 || a.p.N == 0) return y;
  const auto& k = kernels();
  const DType dt = lowrank_dtype(x);
  lowrank::EpilogueArgs e;
  e.out = y.mutable_data_ptr();
  e.ldo = a.p.N;
  e.bias = a.bias ? a.bias->const_data_ptr() : nullptr;
  e.act = a.act;
  run_linear(k, dt, a.p, e, x.options());
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_linear_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation) {
  const char* op = "lowrank_linear_backward";
  LinearArgs a = linear_args(op, x, A, B, bias, activation);
  check_cpu(op, "x", x);
  const at::Tensor gy = check_grad_y(op, grad_y, x, a.p.N);
  const auto& k = kernels();
  const DType dt = lowrank_dtype(x);
  auto gemm = [&](lowrank::Strided left, bool left_f32, int64_t M, int64_t K, lowrank::Strided right, bool right_f32,
                  int64_t N, const lowrank::EpilogueArgs& e) {
    if (M == 0 || N == 0) return;
    const at::Tensor rp = pack(k, right_f32 ? DType::f32 : dt, right, K, N, x.options());
    const int64_t tiles = task_tiles(k, M, k.gemm_tile_rows(N));
    at::parallel_for(0, tiles, 1, [&](int64_t b, int64_t en) {
      k.gemm(dt, left_f32, left, M, K, rp.const_data_ptr<float>(), N, e, tiles, b, en);
    });
  };
  auto activation_grad = [&](at::Tensor& G) {
    const lowrank::LinearProblem& p = a.p;
    lowrank::EpilogueArgs e;
    e.out = G.mutable_data_ptr();
    e.ldo = p.N;
    e.bias = a.bias ? a.bias->const_data_ptr() : nullptr;
    e.act = a.act;
    e.mode = lowrank::EpilogueMode::activation_grad;
    e.grad = gy.const_data_ptr();
    e.ldg = p.N;
    run_linear(k, dt, p, e, x.options());
  };
  return lowrank_linear_backward_with(a, x, A, B, gy, gemm, activation_grad);
}

at::Tensor run_ffn(const char* op, FfnArgs& a, const at::Tensor& x, const at::Tensor& A1, const at::Tensor& B1,
                   const at::Tensor& A2, const at::Tensor& B2, const at::Tensor* Au, const at::Tensor* Bu) {
  check_cpu(op, "x", x);
  auto& p = a.p;
  at::Tensor y = at::empty(out_shape(x, p.N), x.options());
  if (p.M == 0 || p.N == 0) return y;
  const auto& k = kernels();
  const DType dt = lowrank_dtype(x);
  p.tiles = task_tiles(k, p.M, k.ffn_tile_rows(p));
  void* out = y.mutable_data_ptr();
  if (dt == DType::bf16 && k.has_bf16_dot()) {
    const at::Tensor packs[6] = {
        pack_pairs(k, p.a1, p.K, p.r1, x.options()), pack_pairs(k, p.b1, p.r1, p.d_ff, x.options()),
        pack_pairs(k, p.a2, p.d_ff, p.r2, x.options()), pack_pairs(k, p.b2, p.r2, p.N, x.options()),
        p.gated ? pack_pairs(k, p.au, p.K, p.r1u, x.options()) : at::Tensor(),
        p.gated ? pack_pairs(k, p.bu, p.r1u, p.d_ff, x.options()) : at::Tensor()};
    const uint16_t* pairs[6];
    for (int i = 0; i < 6; ++i)
      pairs[i] = packs[i].defined() ? reinterpret_cast<const uint16_t*>(packs[i].const_data_ptr()) : nullptr;
    at::parallel_for(0, p.tiles, 1, [&](int64_t b, int64_t e) { k.ffn_bf16(p, pairs, out, b, e); });
    return y;
  }
  const at::Tensor a1 = pack(k, dt, p.a1, p.K, p.r1, x.options());
  const at::Tensor b1 = pack(k, dt, p.b1, p.r1, p.d_ff, x.options());
  const at::Tensor a2 = pack(k, dt, p.a2, p.d_ff, p.r2, x.options());
  const at::Tensor b2 = pack(k, dt, p.b2, p.r2, p.N, x.options());
  p.a1p = a1.const_data_ptr<float>();
  p.b1p = b1.const_data_ptr<float>();
  p.a2p = a2.const_data_ptr<float>();
  p.b2p = b2.const_data_ptr<float>();
  at::Tensor au, bu;
  if (p.gated) {
    au = pack(k, dt, p.au, p.K, p.r1u, x.options());
    bu = pack(k, dt, p.bu, p.r1u, p.d_ff, x.options());
    p.aup = au.const_data_ptr<float>();
    p.bup = bu.const_data_ptr<float>();
  }
  at::parallel_for(0, p.tiles, 1, [&](int64_t b, int64_t e) { k.ffn(dt, p, out, b, e); });
  return y;
}

at::Tensor lowrank_ffn_cpu(const at::Tensor& x, const at::Tensor& A1, const at::Tensor& B1,
                           const std::optional<at::Tensor>& b1, const at::Tensor& A2, const at::Tensor& B2,
                           const std::optional<at::Tensor>& b2, c10::string_view activation) {
  FfnArgs a = ffn_args("lowrank_ffn", x, A1, B1, b1, A2, B2, b2, activation);
  return run_ffn("lowrank_ffn", a, x, A1, B1, A2, B2, nullptr, nullptr);
}

at::Tensor lowrank_gated_ffn_cpu(const at::Tensor& x, const at::Tensor& Ag, const at::Tensor& Bg, const at::Tensor& Au,
                                 const at::Tensor& Bu, const at::Tensor& Ad, const at::Tensor& Bd,
                                 c10::string_view activation) {
  FfnArgs a = gated_ffn_args("lowrank_gated_ffn", x, Ag, Bg, Au, Bu, Ad, Bd, activation);
  return run_ffn("lowrank_gated_ffn", a, x, Ag, Bg, Ad, Bd, &Au, &Bu);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) {
  m.impl("lowrank_linear", &lowrank_linear_cpu);
  m.impl("lowrank_linear_backward", &lowrank_linear_backward_cpu);
  m.impl("lowrank_ffn", &lowrank_ffn_cpu);
  m.impl("lowrank_gated_ffn", &lowrank_gated_ffn_cpu);
}

}  // namespace flashstream::cpu
