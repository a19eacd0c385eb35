// Low-rank attention on CUDA: the same argument checks as the CPU path (lowrank_attention_args.h),
// the fp32 rank-space workspace P, then the kernels of include/flashstream/lowrank/attention_cuda.cuh
// on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/lowrank/attention_cuda.cuh"
#include "lowrank_attention_args.h"

namespace flashstream::cuda {
namespace {

at::Tensor lowrank_attention_cuda(const at::Tensor& x, const at::Tensor& Aq, const at::Tensor& Bq,
                                  const std::optional<at::Tensor>& bq, const at::Tensor& Ak, const at::Tensor& Bk,
                                  const std::optional<at::Tensor>& bk, const at::Tensor& Av, const at::Tensor& Bv,
                                  const std::optional<at::Tensor>& bv, int64_t num_heads, bool causal,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  const char* op = "lowrank_attention";
  lowrank::AttnArgs a =
      lowrank_attention_args(op, x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv, num_heads, causal, key_padding_mask);
  check_cuda(op, "x", x);
  DeviceGuard guard(x);
  at::Tensor out = at::empty({a.B, a.S, a.N}, x.options());
  if (out.numel() == 0) return out;
  at::Tensor P = at::empty({a.B * a.S, a.RP()}, x.options().dtype(at::kFloat));
  a.P = P.mutable_data_ptr<float>();
  a.out = out.mutable_data_ptr();
  const cudaStream_t stream = current_stream(x);
  check_launch(by_dtype(lowrank_dtype_of(x),
                        [&](auto t) { return lowrank::cuda::launch_lowrank_attention<decltype(t)>(a, stream); }),
               op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) { m.impl("lowrank_attention", &lowrank_attention_cuda); }

}  // namespace flashstream::cuda
