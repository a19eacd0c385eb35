// Sink KV cache on CUDA: the same argument checks as the CPU path (sink_args.h), then the kernels
// of include/flashstream/sink/cuda.cuh on the current stream. Checks that would need the device's
// data (page-table ranges, lengths against capacity) are not made here: they would cost a host
// sync and break graph capture. SinkCache checks capacity on its host mirror of the lengths, and
// the kernels skip any slot outside a page table or the pool, so nothing is written out of bounds.
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/sink/cuda.cuh"
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
  sink::AttnArgs a;
  a.positions = sink_positions(op, positions);
  a.rope_style = sink_rope_style(op, rope_style);
  a.g = sink_geometry(op, sink_len, window, sink_mask(op, mask), chunk_size);
  FS_CHECK_VALUE(rope_theta > 0.0, op, "rope_theta must be > 0, got ", rope_theta);
  FS_CHECK_VALUE(softcap >= 0.0, op, "softcap must be >= 0 (0: none), got ", softcap);
  check_sink_logits(op, q, sink_logits);
  const int n_cache = int(k_pool.has_value()) + int(v_pool.has_value()) + int(page_table.has_value()) + int(lengths.has_value());
  FS_CHECK_VALUE(n_cache == 0 || n_cache == 4, op, "k_pool, v_pool, page_table and lengths come together or not at all");
  if (full_heads.has_value()) {
    check_dtype(op, "full_heads", *full_heads, at::kBool);
    check_shape(op, "full_heads", *full_heads, {k.size(2)}, "[Hkv]");
    check_same_device(op, "full_heads", *full_heads, q, "q");
    check_contiguous(op, "full_heads", *full_heads);
  }
  a.B = q.size(0); a.T = q.size(1); a.Hq = q.size(2); a.Hkv = k.size(2); a.D = q.size(3);
  if (n_cache == 4) {
    check_sink_cache(op, k, *k_pool, *v_pool, *page_table, *lengths, full_heads);
    a.page_size = k_pool->size(1);
    a.pages_per_head = page_table->size(2);
    a.pool_pages = k_pool->size(0);
    a.k_pool = k_pool->const_data_ptr();
    a.v_pool = v_pool->const_data_ptr();
    a.page_table = page_table->const_data_ptr<int32_t>();
    a.lengths = lengths->const_data_ptr<int64_t>();
  }
  a.rope_theta = rope_theta;
  a.scale = float(scale);
  a.softcap = float(softcap);
  a.q = q.const_data_ptr();
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  if (full_heads.has_value()) a.full_heads = full_heads->const_data_ptr<bool>();
  if (sink_logits.has_value()) a.sink_logits = sink_logits->const_data_ptr<float>();
  if (caller_outputs) check_sink_outputs(op, q, k, v, out, lse);
  DeviceGuard guard(q);
  a.out = out.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr<float>();
  if (q.numel() == 0) return;
  // Split-KV when the blocks alone leave SMs idle. The lengths live on the device, so the keys an
  // item may see are bounded by what its page table holds (sink + window for streaming heads).
  const int64_t capacity = a.page_table != nullptr ? a.pages_per_head * a.page_size : 0;
  const bool every_token = full_heads.has_value() || a.g.window == sink::kNoWindow;
  const int64_t max_keys = (every_token ? capacity : std::min(capacity, a.g.sink + a.g.window)) + a.T;
  a.splits = sink::choose_splits(sink::cuda::attend_blocks(a), multiprocessors(q), max_keys, 256);
  at::Tensor parts;
  if (a.splits > 1) {
    const int64_t rows = a.B * a.T * a.Hq;
    parts = at::empty({sink::cuda::split_workspace_floats(a)}, q.options().dtype(at::kFloat));
    a.part_m = parts.mutable_data_ptr<float>();
    a.part_l = a.part_m + a.splits * rows;
    a.part_acc = a.part_l + a.splits * rows;
  }
  const cudaStream_t stream = current_stream(q);
  check_launch(by_dtype(sink_dtype_of(q), [&](auto t) { return sink::cuda::launch_attend<decltype(t)>(a, stream); }), op);
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
