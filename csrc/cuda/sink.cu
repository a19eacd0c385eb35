// Sink KV cache on CUDA: the same argument checks as the CPU path (sink_args.h), then the kernels
// of include/flashstream/sink/cuda.cuh on the current stream; attention in bf16 / fp16 with enough
// rows takes the tensor-core kernel (cuda_tc.cuh) when tc_params.h's use_tensor_cores allows. Checks that would need the device's
// data (page-table ranges, lengths against capacity) are not made here: they would cost a host
// sync and break graph capture. SinkCache checks capacity on its host mirror of the lengths, and
// the kernels skip any slot outside a page table or the pool, so nothing is written out of bounds.
#include <algorithm>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/sink/cuda.cuh"
#include "flashstream/sink/cuda_tc.cuh"
#include "sink_args.h"

namespace flashstream::cuda {
namespace {

// Attention into out / lse (allocated by the functional op, or the caller's for sink_attention_out).
void attend_into(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& k_pool, const std::optional<at::Tensor>& v_pool,
                 const std::optional<at::Tensor>& page_table, const std::optional<at::Tensor>& lengths,
                 const std::optional<at::Tensor>& full_heads, int64_t sink_len, int64_t window,
                 c10::string_view positions, double rope_theta, c10::string_view rope_style, c10::string_view mask,
                 int64_t chunk_size, double scale, double softcap, const std::optional<at::Tensor>& sink_logits,
                 at::Tensor& out, at::Tensor& lse, bool caller_outputs) {
  check_sink_qkv(op, q, k, v);
  check_cuda(op, "q", q);
  sink::AttnArgs a = sink_attention_args(op, q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len,
                                         window, positions, rope_theta, rope_style, mask, chunk_size, scale, softcap,
                                         sink_logits, out, lse, caller_outputs);
  DeviceGuard guard(q);
  if (q.numel() == 0) return;
  // Prefill with enough rows takes the tensor cores, unsplit (the rule asked with splits = 1): even
  // a grid that leaves SMs idle beats the SIMT kernel's fp32 FMAs spread wider by split-KV.
  const DType dt = sink_dtype_of(q);
  const bool tensor_cores =
      sink::tc::use_tensor_cores(dt != DType::f32, compute_capability(q), a.D, 1, a.T, a.Hq / a.Hkv,
                                 sink::tc::key_rows_aligned(a.k, a.v, a.k_pool, a.v_pool));
  // Otherwise split-KV when the blocks alone leave SMs idle. The lengths live on the device, so the
  // keys an item may see are bounded by what its page table holds (sink + window for streaming heads).
  const int64_t capacity = a.page_table != nullptr ? a.pages_per_head * a.page_size : 0;
  const bool every_token = full_heads.has_value() || a.g.window == sink::kNoWindow;
  const int64_t max_keys = (every_token ? capacity : std::min(capacity, a.g.sink + a.g.window)) + a.T;
  a.splits = tensor_cores ? 1 : sink::choose_splits(sink::cuda::attend_blocks(a), multiprocessors(q), max_keys, 256);
  const at::Tensor parts = sink_split_workspace(a, q);
  const cudaStream_t stream = current_stream(q);
  check_launch(by_dtype(dt, [&](auto t) {
                 using T = decltype(t);
                 if constexpr (!std::is_same_v<T, float>) {
                   if (tensor_cores) return sink::tc::launch_attend_tc<T>(a, stream);
                 }
                 return sink::cuda::launch_attend<T>(a, stream);
               }),
               op);
}

std::tuple<at::Tensor, at::Tensor> sink_attention_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& k_pool,
    const std::optional<at::Tensor>& v_pool, const std::optional<at::Tensor>& page_table,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& full_heads, int64_t sink_len,
    int64_t window, c10::string_view positions, double rope_theta, c10::string_view rope_style, c10::string_view mask,
    int64_t chunk_size, double scale, double softcap, const std::optional<at::Tensor>& sink_logits) {
  check_sink_qkv("sink_attention", q, k, v);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty(q.sizes().slice(0, 3), q.options().dtype(at::kFloat));
  attend_into("sink_attention", q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len, window, positions,
              rope_theta, rope_style, mask, chunk_size, scale, softcap, sink_logits, out, lse, false);
  return {out, lse};
}

void sink_attention_out_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& k_pool,
    const std::optional<at::Tensor>& v_pool, const std::optional<at::Tensor>& page_table,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& full_heads, int64_t sink_len,
    int64_t window, c10::string_view positions, double rope_theta, c10::string_view rope_style, c10::string_view mask,
    int64_t chunk_size, double scale, double softcap, const std::optional<at::Tensor>& sink_logits, at::Tensor& out,
    at::Tensor& lse) {
  attend_into("sink_attention_out", q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len, window,
              positions, rope_theta, rope_style, mask, chunk_size, scale, softcap, sink_logits, out, lse, true);
}

void sink_cache_append_cuda(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_pool, at::Tensor& v_pool,
                            const at::Tensor& page_table, at::Tensor& lengths,
                            const std::optional<at::Tensor>& full_heads, int64_t sink_len, int64_t window,
                            std::optional<double> ema_alpha) {
  const char* op = "sink_cache_append";
  check_cuda(op, "k", k);
  const sink::AppendArgs a =
      sink_append_args(op, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len, window, ema_alpha);
  if (a.T == 0) return;
  DeviceGuard guard(k);
  const cudaStream_t stream = current_stream(k);
  check_launch(by_dtype(sink_dtype_of(k), [&](auto t) { return sink::cuda::launch_append<decltype(t)>(a, stream); }), op);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) {
  m.impl("sink_attention", &sink_attention_cuda);
  m.impl("sink_attention_out", &sink_attention_out_cuda);
  m.impl("sink_cache_append", &sink_cache_append_cuda);
}

}  // namespace flashstream::cuda
