// Sink KV cache on CPU: argument checks (sink_args.h), the data checks only the CPU can afford
// (page-table ranges, pool capacity), then the ISA-selected kernels over at::parallel_for.
#include <algorithm>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/scratch.h"
#include "cpu/isa/sink.h"
#include "cpu/rope_table.h"
#include "flashstream/sink/cpu_tiles.h"
#include "flashstream/sink/split.h"
#include "sink_args.h"

namespace flashstream::cpu {
namespace {

const SinkCpuKernels& kernels() { FS_SELECT_ISA(sink_kernels) }

// Page-table entries in [0, pages) and lengths >= 0; returns the largest length.
int64_t check_cache_values(const char* op, const at::Tensor& k_pool, const at::Tensor& page_table,
                           const at::Tensor& lengths) {
  const int64_t pages = k_pool.size(0);
  const int32_t* pt = page_table.const_data_ptr<int32_t>();
  for (int64_t i = 0; i < page_table.numel(); ++i)
    FS_CHECK_VALUE(pt[i] >= 0 && pt[i] < pages, op, "page_table entries must be in [0, ", pages, "), got ", pt[i]);
  int64_t n_max = 0;
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < lengths.numel(); ++b) {
    FS_CHECK_VALUE(len[b] >= 0, op, "lengths must be >= 0, got ", len[b], " for stream ", b);
    n_max = len[b] > n_max ? len[b] : n_max;
  }
  return n_max;
}

// Slots a (stream, head) of `tokens` tokens occupies, against what its page table holds.
void check_capacity(const char* op, const sink::Geometry& g, bool any_full, int64_t tokens, int64_t capacity) {
  const bool ring = g.window != sink::kNoWindow;
  const int64_t streaming = ring ? (tokens < g.sink + g.window ? tokens : g.sink + g.window) : tokens;
  FS_CHECK_VALUE(streaming <= capacity, op, "pool exhausted: a stream needs ", streaming,
                 " slots but its page table holds ", capacity, " (pages_per_head * page_size)");
  FS_CHECK_VALUE(!any_full || tokens <= capacity, op, "pool exhausted: a full head needs ", tokens,
                 " slots but its page table holds ", capacity, " (pages_per_head * page_size); raise max_tokens");
}

// Attention into out / lse (allocated by the functional op, or the caller's for sink_attention_out).
void attend_into(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& k_pool, const std::optional<at::Tensor>& v_pool,
                 const std::optional<at::Tensor>& page_table, const std::optional<at::Tensor>& lengths,
                 const std::optional<at::Tensor>& full_heads, int64_t sink_len, int64_t window,
                 c10::string_view positions, double rope_theta, c10::string_view rope_style, c10::string_view mask,
                 int64_t chunk_size, double scale, double softcap, const std::optional<at::Tensor>& sink_logits,
                 at::Tensor& out, at::Tensor& lse, bool caller_outputs) {
  check_sink_qkv(op, q, k, v);
  check_cpu(op, "q", q);
  sink::AttnArgs a = sink_attention_args(op, q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len,
                                         window, positions, rope_theta, rope_style, mask, chunk_size, scale, softcap,
                                         sink_logits, out, lse, caller_outputs);
  int64_t n_max = 0;
  bool any_full = false;
  if (a.k_pool != nullptr) {  // the data checks only the CPU can afford
    n_max = check_cache_values(op, *k_pool, *page_table, *lengths);
    any_full = full_heads.has_value() && full_heads->any().item<bool>();
    check_capacity(op, a.g, any_full, n_max, a.page_size * a.pages_per_head);
  }
  if (q.numel() == 0) return;
  const int64_t G = a.Hq / a.Hkv, tile = sink::cpu::query_tile(G);
  const int64_t items = a.B * a.Hkv * ((a.T + tile - 1) / tile);
  // Split-KV when the (stream, head, query tile) items alone cannot keep the threads busy (decode
  // of few streams): the most keys an item can see bounds how finely its keys are cut.
  const bool every_token = any_full || a.g.window == sink::kNoWindow;
  const int64_t max_keys = every_token ? n_max + a.T : std::min(n_max, a.g.sink + a.g.window) + a.T;
  a.splits = sink::choose_splits(items, at::get_num_threads(), max_keys, 2 * sink::cpu::kKeyBlock);
  const at::Tensor parts = sink_split_workspace(a, q);
  // Key positions run from 0 to under max_keys in either frame: one shared table (rope_table.h).
  std::shared_ptr<const RopeTable> rope;
  if (a.positions != sink::Positions::none && a.D % 2 == 0) {
    rope = key_rope_table(a.rope_theta, a.D, max_keys);
    a.key_cos = rope->cos.data();
    a.key_sin = rope->sin.data();
    a.key_rope_len = rope->len;
  }
  const int64_t scratch_floats = sink::cpu::attend_scratch_floats(a.D, G);
  const auto& kern = kernels();
  const DType dt = sink_dtype_of(q);
  at::parallel_for(0, items * a.splits, 1, [&](int64_t begin, int64_t end) {
    AlignedScratch scratch(scratch_floats);
    kern.attend(dt, a, begin, end, scratch.get());
  });
  if (a.splits > 1)
    at::parallel_for(0, a.B * a.T * a.Hq, 16, [&](int64_t begin, int64_t end) { kern.merge(dt, a, begin, end); });
}

std::tuple<at::Tensor, at::Tensor> sink_attention_cpu(
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

void sink_attention_out_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& k_pool,
    const std::optional<at::Tensor>& v_pool, const std::optional<at::Tensor>& page_table,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& full_heads, int64_t sink_len,
    int64_t window, c10::string_view positions, double rope_theta, c10::string_view rope_style, c10::string_view mask,
    int64_t chunk_size, double scale, double softcap, const std::optional<at::Tensor>& sink_logits, at::Tensor& out,
    at::Tensor& lse) {
  attend_into("sink_attention_out", q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len, window,
              positions, rope_theta, rope_style, mask, chunk_size, scale, softcap, sink_logits, out, lse, true);
}

void sink_cache_append_cpu(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_pool, at::Tensor& v_pool,
                           const at::Tensor& page_table, at::Tensor& lengths,
                           const std::optional<at::Tensor>& full_heads, int64_t sink_len, int64_t window,
                           std::optional<double> ema_alpha) {
  const char* op = "sink_cache_append";
  check_cpu(op, "k", k);
  const sink::AppendArgs a =
      sink_append_args(op, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink_len, window, ema_alpha);
  const int64_t n_max = check_cache_values(op, k_pool, page_table, lengths);
  const bool any_full = full_heads.has_value() && full_heads->any().item<bool>();
  check_capacity(op, a.g, any_full, n_max + a.T, a.page_size * a.pages_per_head);
  if (a.T == 0) return;
  const auto& kern = kernels();
  const DType dt = sink_dtype_of(k);
  at::parallel_for(0, a.B * a.Hkv, 1, [&](int64_t begin, int64_t end) {
    AlignedScratch tmp(a.D);
    kern.append(dt, a, begin, end, tmp.get());
  });
  int64_t* len = lengths.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < a.B; ++b) len[b] += a.T;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) {
  m.impl("sink_attention", &sink_attention_cpu);
  m.impl("sink_attention_out", &sink_attention_out_cpu);
  m.impl("sink_cache_append", &sink_cache_append_cpu);
}

}  // namespace flashstream::cpu
