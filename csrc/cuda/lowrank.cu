// Low-rank matmul chains on CUDA: the same argument checks and backward composition as the CPU
// path (lowrank_args.h), then the kernels of include/flashstream/lowrank/cuda.cuh on the current
// stream. lowrank_linear's forward in bf16 / fp16 takes the tensor-core kernel (cuda_tc.cuh)
// whenever tc::use_tensor_cores allows it, else the SIMT kernel.
#include <array>
#include <atomic>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/lowrank/cuda.cuh"
#include "flashstream/lowrank/cuda_tc.cuh"
#include "lowrank_args.h"

namespace flashstream::cuda {
namespace {

namespace lr = ::flashstream::lowrank;

void check_devices(const char* op, const at::Tensor& x) { check_cuda(op, "x", x); }

// 10 * major + minor of the current device, queried once per device (0: not yet known).
int compute_capability() {
  static std::array<std::atomic<int>, 64> cache{};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (device < 0 || device >= int(cache.size())) return 0;  // unknown: the SIMT kernel
  int cc = cache[size_t(device)].load(std::memory_order_relaxed);
  if (cc == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    cc = 10 * major + minor;
    cache[size_t(device)].store(cc, std::memory_order_relaxed);
  }
  return cc;
}

bool linear_on_tensor_cores(const lr::LinearProblem& p, DType dt, const void* out) {
  const auto op = [](const lr::Strided& s) { return lr::tc::Operand{s.ptr, s.rs, s.cs}; };
  return lr::tc::use_tensor_cores(dt != DType::f32, compute_capability(), p.M, p.K, p.r, p.N, op(p.x), op(p.a),
                                  op(p.b), out);
}

// y = x A B on tensor cores (forward epilogue, ldo = N); the caller checked linear_on_tensor_cores.
void launch_linear_tc(const char* op, const lr::LinearProblem& p, const lr::EpilogueArgs& e, DType dt,
                      cudaStream_t stream) {
  check_launch(by_dtype(dt, [&](auto t) {
    using T = decltype(t);
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // unreachable: the rule admits only bf16 / fp16
    } else {
      return lr::tc::launch_linear_tc<T>(p, e, stream);
    }
  }), op);
}

at::Tensor lowrank_linear_cuda(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                               const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation) {
  const char* op = "lowrank_linear";
  LinearArgs a = linear_args(op, x, A, B, bias, activation);
  check_devices(op, x);
  DeviceGuard guard(x);
  at::Tensor y = at::empty(out_shape(x, a.p.N), x.options());
  if (a.p.M == 0 || a.p.N == 0) return y;
  lr::EpilogueArgs e;
  e.out = y.mutable_data_ptr();
  e.ldo = a.p.N;
  e.bias = a.bias ? a.bias->const_data_ptr() : nullptr;
  e.act = a.act;
  const cudaStream_t stream = current_stream(x);
  const DType dt = lowrank_dtype(x);
  if (linear_on_tensor_cores(a.p, dt, e.out)) {
    launch_linear_tc(op, a.p, e, dt, stream);
  } else {
    check_launch(by_dtype(dt, [&](auto t) { return lr::cuda::launch_linear<decltype(t)>(a.p, e, stream); }), op);
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_linear_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const std::optional<at::Tensor>& bias, std::optional<c10::string_view> activation) {
  const char* op = "lowrank_linear_backward";
  LinearArgs a = linear_args(op, x, A, B, bias, activation);
  check_devices(op, x);
  DeviceGuard guard(x);
  const at::Tensor gy = check_grad_y(op, grad_y, x, a.p.N);
  const cudaStream_t stream = current_stream(x);
  const DType dt = lowrank_dtype(x);
  auto gemm = [&](lr::Strided left, bool left_f32, int64_t M, int64_t K, lr::Strided right, bool right_f32, int64_t N,
                  const lr::EpilogueArgs& e) {
    check_launch(by_dtype(dt, [&](auto t) {
      return lr::cuda::launch_gemm<decltype(t)>(left_f32, left, M, K, right_f32, right, N, e, stream);
    }), op);
  };
  auto activation_grad = [&](at::Tensor& G) {
    lr::EpilogueArgs e;
    e.out = G.mutable_data_ptr();
    e.ldo = a.p.N;
    e.bias = a.bias ? a.bias->const_data_ptr() : nullptr;
    e.act = a.act;
    e.mode = lr::EpilogueMode::activation_grad;
    e.grad = gy.const_data_ptr();
    e.ldg = a.p.N;
    check_launch(by_dtype(dt, [&](auto t) { return lr::cuda::launch_linear<decltype(t)>(a.p, e, stream); }), op);
  };
  // grad_x = (G B^T) A^T is lowrank_linear's chain with factors B^T, A^T: on tensor cores when the
  // rule allows (row-major copies of the small transposed factors; G B^T rounded to the dtype, as
  // the unfused chain's autograd rounds it).
  auto grad_x_chain = [&](const at::Tensor& G, at::Tensor& grad_x) {
    if (dt == DType::f32) return false;
    const at::Tensor Bt = B.t().contiguous(), At = A.t().contiguous();  // [N, r], [r, K]
    lr::LinearProblem q;
    q.x = strided(G);
    q.M = a.p.M;
    q.K = a.p.N;
    q.r = a.p.r;
    q.N = a.p.K;
    q.a = strided(Bt);
    q.b = strided(At);
    if (!linear_on_tensor_cores(q, dt, grad_x.const_data_ptr())) return false;
    lr::EpilogueArgs e;
    e.out = grad_x.mutable_data_ptr();
    e.ldo = a.p.K;
    launch_linear_tc(op, q, e, dt, stream);
    return true;
  };
  return lowrank_linear_backward_with(a, x, A, B, gy, gemm, activation_grad, grad_x_chain);
}

at::Tensor run_ffn(const char* op, const FfnArgs& a, const at::Tensor& x) {
  check_devices(op, x);
  DeviceGuard guard(x);
  at::Tensor y = at::empty(out_shape(x, a.p.N), x.options());
  if (a.p.M == 0 || a.p.N == 0) return y;
  const cudaStream_t stream = current_stream(x);
  check_launch(by_dtype(lowrank_dtype(x), [&](auto t) {
    using T = decltype(t);
    return lr::cuda::launch_ffn<T>(a.p, static_cast<T*>(y.mutable_data_ptr()), stream);
  }), op);
  return y;
}

at::Tensor lowrank_ffn_cuda(const at::Tensor& x, const at::Tensor& A1, const at::Tensor& B1,
                            const std::optional<at::Tensor>& b1, const at::Tensor& A2, const at::Tensor& B2,
                            const std::optional<at::Tensor>& b2, c10::string_view activation) {
  const FfnArgs a = ffn_args("lowrank_ffn", x, A1, B1, b1, A2, B2, b2, activation);
  return run_ffn("lowrank_ffn", a, x);
}

at::Tensor lowrank_gated_ffn_cuda(const at::Tensor& x, const at::Tensor& Ag, const at::Tensor& Bg, const at::Tensor& Au,
                                  const at::Tensor& Bu, const at::Tensor& Ad, const at::Tensor& Bd,
                                  c10::string_view activation) {
  const FfnArgs a = gated_ffn_args("lowrank_gated_ffn", x, Ag, Bg, Au, Bu, Ad, Bd, activation);
  return run_ffn("lowrank_gated_ffn", a, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) {
  m.impl("lowrank_linear", &lowrank_linear_cuda);
  m.impl("lowrank_linear_backward", &lowrank_linear_backward_cuda);
  m.impl("lowrank_ffn", &lowrank_ffn_cuda);
  m.impl("lowrank_gated_ffn", &lowrank_gated_ffn_cuda);
}

}  // namespace flashstream::cuda
