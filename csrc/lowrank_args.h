// Low-rank matmul chains (K3): argument checks shared by the CPU and CUDA bindings, the parsed
// problem descriptions (include/flashstream/lowrank/params.h), and lowrank_linear's backward as
// a sequence of products that each device provides. Device-agnostic, so both paths reject
// exactly the same inputs and compute the same backward.
#pragma once
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>

#include "check.h"
#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/params.h"

namespace flashstream {

inline DType lowrank_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

inline lowrank::Activation parse_activation(const char* op, const std::optional<c10::string_view>& name,
                                            bool allow_none = true) {
  if (!name.has_value()) {
    FS_CHECK_VALUE(allow_none, op, "activation must be 'gelu' or 'silu', got None");
    return lowrank::Activation::none;
  }
  const std::string s(name->data(), name->size());
  if (s == "gelu") return lowrank::Activation::gelu;
  if (s == "silu") return lowrank::Activation::silu;
  FS_CHECK_VALUE(false, op, "activation must be ", allow_none ? "None, " : "", "'gelu' or 'silu', got '", s, "'");
  return lowrank::Activation::none;
}

inline lowrank::Strided strided(const at::Tensor& t) { return {t.const_data_ptr(), t.stride(0), t.stride(1)}; }
inline lowrank::Strided transposed(const at::Tensor& t) { return {t.const_data_ptr(), t.stride(1), t.stride(0)}; }

// A factor: 2-D [rows, cols] (rows or cols checked against `rows_expr`/`cols_expr` when >= 0),
// x's dtype and device. Any strides.
inline void check_factor(const char* op, const char* arg, const at::Tensor& f, const at::Tensor& x, int64_t rows,
                         const char* rows_expr, int64_t cols, const char* cols_expr) {
  FS_CHECK_TYPE(f.scalar_type() == x.scalar_type(), op, arg, " must have x's dtype (", x.scalar_type(), "), got ",
                f.scalar_type());
  check_same_device(op, arg, f, x, "x");
  FS_CHECK_VALUE(f.dim() == 2, op, arg, " must be 2-D [", rows_expr, ", ", cols_expr, "], got ", shape_str(f.sizes()));
  FS_CHECK_VALUE(rows < 0 || f.size(0) == rows, op, arg, " must be [", rows_expr, ", ", cols_expr, "] with ",
                 rows_expr, " = ", rows, ", got ", shape_str(f.sizes()));
  FS_CHECK_VALUE(cols < 0 || f.size(1) == cols, op, arg, " must be [", rows_expr, ", ", cols_expr, "] with ",
                 cols_expr, " = ", cols, ", got ", shape_str(f.sizes()));
}

inline void check_rank(const char* op, const char* arg, int64_t r) {
  FS_CHECK_VALUE(r >= 1 && r <= lowrank::kMaxRank, op, "the rank (", arg, ") must be in [1, ", lowrank::kMaxRank,
                 "], got ", r);
}

inline void check_bias(const char* op, const char* arg, const std::optional<at::Tensor>& b, const at::Tensor& x,
                       int64_t n, const char* n_expr) {
  if (!b.has_value()) return;
  FS_CHECK_TYPE(b->scalar_type() == x.scalar_type(), op, arg, " must have x's dtype (", x.scalar_type(), "), got ",
                b->scalar_type());
  check_same_device(op, arg, *b, x, "x");
  FS_CHECK_VALUE(b->dim() == 1 && b->size(0) == n, op, arg, " must be [", n_expr, "] = [", n, "], got ",
                 shape_str(b->sizes()));
}

inline void check_x(const char* op, const at::Tensor& x) {
  check_float_dtype(op, "x", x);
  FS_CHECK_VALUE(x.dim() >= 1, op, "x must be [..., K], got a 0-dim tensor");
}

// x [..., K] as a 2-D [M, K] view (a copy only if its strides can't be flattened).
inline at::Tensor rows_of(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  return x.reshape({m, x.size(-1)});
}

inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}

struct LinearArgs {
  at::Tensor x2;  // [M, K]
  lowrank::LinearProblem p;
  lowrank::Activation act;
  std::optional<at::Tensor> bias;  // contiguous
};

inline LinearArgs linear_args(const char* op, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                              const std::optional<at::Tensor>& bias, const std::optional<c10::string_view>& activation) {
  check_x(op, x);
  const int64_t K = x.size(-1);
  check_factor(op, "A", A, x, K, "K", -1, "r");
  const int64_t r = A.size(1);
  check_rank(op, "A.shape[1]", r);
  check_factor(op, "B", B, x, r, "r", -1, "N");
  const int64_t N = B.size(1);
  check_bias(op, "bias", bias, x, N, "N");
  LinearArgs a;
  a.act = parse_activation(op, activation);
  a.x2 = rows_of(x);
  a.p.x = strided(a.x2);
  a.p.M = a.x2.size(0);
  a.p.K = K;
  a.p.r = r;
  a.p.N = N;
  a.p.a = strided(A);
  a.p.b = strided(B);
  if (bias.has_value()) a.bias = bias->contiguous();
  return a;
}

struct FfnArgs {
  at::Tensor x2;
  lowrank::FfnProblem p;
  std::optional<at::Tensor> b1, b2;
};

inline FfnArgs ffn_args(const char* op, const at::Tensor& x, const at::Tensor& A1, const at::Tensor& B1,
                        const std::optional<at::Tensor>& b1, const at::Tensor& A2, const at::Tensor& B2,
                        const std::optional<at::Tensor>& b2, c10::string_view activation) {
  check_x(op, x);
  const int64_t K = x.size(-1);
  check_factor(op, "A1", A1, x, K, "K", -1, "r1");
  check_rank(op, "A1.shape[1]", A1.size(1));
  check_factor(op, "B1", B1, x, A1.size(1), "r1", -1, "d_ff");
  const int64_t d_ff = B1.size(1);
  check_bias(op, "b1", b1, x, d_ff, "d_ff");
  check_factor(op, "A2", A2, x, d_ff, "d_ff", -1, "r2");
  check_rank(op, "A2.shape[1]", A2.size(1));
  check_factor(op, "B2", B2, x, A2.size(1), "r2", -1, "N");
  check_bias(op, "b2", b2, x, B2.size(1), "N");
  FfnArgs a;
  a.x2 = rows_of(x);
  auto& p = a.p;
  p.x = strided(a.x2);
  p.M = a.x2.size(0);
  p.K = K;
  p.r1 = A1.size(1);
  p.d_ff = d_ff;
  p.r2 = A2.size(1);
  p.N = B2.size(1);
  p.act = parse_activation(op, activation, false);
  p.a1 = strided(A1);
  p.b1 = strided(B1);
  p.a2 = strided(A2);
  p.b2 = strided(B2);
  if (b1.has_value()) { a.b1 = b1->contiguous(); p.bias1 = a.b1->const_data_ptr(); }
  if (b2.has_value()) { a.b2 = b2->contiguous(); p.bias2 = a.b2->const_data_ptr(); }
  return a;
}

inline FfnArgs gated_ffn_args(const char* op, const at::Tensor& x, const at::Tensor& Ag, const at::Tensor& Bg,
                              const at::Tensor& Au, const at::Tensor& Bu, const at::Tensor& Ad, const at::Tensor& Bd,
                              c10::string_view activation) {
  check_x(op, x);
  const int64_t K = x.size(-1);
  check_factor(op, "A_gate", Ag, x, K, "K", -1, "r_gate");
  check_rank(op, "A_gate.shape[1]", Ag.size(1));
  check_factor(op, "B_gate", Bg, x, Ag.size(1), "r_gate", -1, "d_ff");
  const int64_t d_ff = Bg.size(1);
  check_factor(op, "A_up", Au, x, K, "K", -1, "r_up");
  check_rank(op, "A_up.shape[1]", Au.size(1));
  check_factor(op, "B_up", Bu, x, Au.size(1), "r_up", d_ff, "d_ff");
  check_factor(op, "A_down", Ad, x, d_ff, "d_ff", -1, "r_down");
  check_rank(op, "A_down.shape[1]", Ad.size(1));
  check_factor(op, "B_down", Bd, x, Ad.size(1), "r_down", -1, "N");
  FfnArgs a;
  a.x2 = rows_of(x);
  auto& p = a.p;
  p.gated = true;
  p.x = strided(a.x2);
  p.M = a.x2.size(0);
  p.K = K;
  p.r1 = Ag.size(1);
  p.r1u = Au.size(1);
  p.d_ff = d_ff;
  p.r2 = Ad.size(1);
  p.N = Bd.size(1);
  p.act = parse_activation(op, activation, false);
  p.a1 = strided(Ag);
  p.b1 = strided(Bg);
  p.au = strided(Au);
  p.bu = strided(Bu);
  p.a2 = strided(Ad);
  p.b2 = strided(Bd);
  return a;
}

inline at::Tensor check_grad_y(const char* op, const at::Tensor& grad_y, const at::Tensor& x, int64_t N) {
  FS_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, "grad_y must have x's dtype (", x.scalar_type(),
                "), got ", grad_y.scalar_type());
  check_same_device(op, "grad_y", grad_y, x, "x");
  const auto want = out_shape(x, N);
  FS_CHECK_VALUE(grad_y.sizes() == c10::IntArrayRef(want), op, "grad_y must be x.shape[:-1] + [N] = ",
                 shape_str(want), ", got ", shape_str(grad_y.sizes()));
  return grad_y.reshape({-1, N}).contiguous();
}

// lowrank_linear's backward, with z = x A B + bias and G = grad_y * act'(z):
//   grad_x = (G B^T) A^T,  grad_A = x^T (G B^T),  grad_B = (x A)^T G,  grad_bias = sum_rows G.
// Every product goes through the device's `gemm(left, left_f32, M, K, right, right_f32, N, epi)`
// (out = epi(left [M, K] @ right [K, N])); G itself through `activation_grad(G_out)`, which
// recomputes z with the fused forward kernel instead of having the forward save it. A device may
// compute grad_x = (G B^T) A^T as one fused chain instead: `grad_x_chain(G, grad_x)` returns
// whether it did (the default never does).
struct NoGradXChain {
  bool operator()(const at::Tensor&, at::Tensor&) const { return false; }
};

template <typename Gemm, typename ActGrad, typename GradXChain = NoGradXChain>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_linear_backward_with(
    const LinearArgs& a, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& gy,
    Gemm&& gemm, ActGrad&& activation_grad, GradXChain&& grad_x_chain = GradXChain{}) {
  const auto& p = a.p;
  const auto f32 = a.x2.options().dtype(at::kFloat);
  at::Tensor G = gy;
  if (a.act != lowrank::Activation::none) {
    G = at::empty({p.M, p.N}, a.x2.options());
    activation_grad(G);
  }
  auto epi_into = [](at::Tensor& out) {
    lowrank::EpilogueArgs e;
    e.out = out.mutable_data_ptr();
    e.ldo = out.stride(0);
    e.out_f32 = out.scalar_type() == at::kFloat;
    return e;
  };
  at::Tensor T = at::empty({p.M, p.r}, f32);  // x A
  at::Tensor U = at::empty({p.M, p.r}, f32);  // G B^T
  gemm(p.x, false, p.M, p.K, strided(A), false, p.r, epi_into(T));
  gemm(strided(G), false, p.M, p.N, transposed(B), false, p.r, epi_into(U));
  at::Tensor grad_x = at::empty({p.M, p.K}, a.x2.options());
  at::Tensor grad_A = at::empty({p.K, p.r}, a.x2.options());
  at::Tensor grad_B = at::empty({p.r, p.N}, a.x2.options());
  if (!grad_x_chain(G, grad_x)) gemm(strided(U), true, p.M, p.r, transposed(A), false, p.K, epi_into(grad_x));
  gemm(transposed(a.x2), false, p.K, p.M, strided(U), true, p.r, epi_into(grad_A));
  gemm(transposed(T), true, p.r, p.M, strided(G), false, p.N, epi_into(grad_B));
  at::Tensor grad_bias = at::sum(G, {0}, false, at::kFloat).to(x.scalar_type());
  return {grad_x.view(x.sizes()), grad_A, grad_B, grad_bias};
}

}  // namespace flashstream
