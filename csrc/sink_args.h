// Sink KV cache argument handling shared by the CPU and CUDA bindings: string options -> enums,
// and every check that needs no tensor data, so both paths reject exactly the same inputs.
#pragma once
#include <optional>
#include <string_view>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "check.h"
#include "flashstream/common/dtype.h"
#include "flashstream/sink/args.h"

namespace flashstream {

inline DType sink_dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

inline sink::Positions sink_positions(const char* op, std::string_view s) {
  if (s == "cache") return sink::Positions::cache;
  if (s == "absolute") return sink::Positions::absolute;
  FS_CHECK_VALUE(s == "none", op, "positions must be 'cache', 'absolute' or 'none', got '", s, "'");
  return sink::Positions::none;
}

inline sink::RopeStyle sink_rope_style(const char* op, std::string_view s) {
  if (s == "half") return sink::RopeStyle::half;
  FS_CHECK_VALUE(s == "interleaved", op, "rope_style must be 'half' or 'interleaved', got '", s, "'");
  return sink::RopeStyle::interleaved;
}

inline sink::Mask sink_mask(const char* op, std::string_view s) {
  if (s == "causal") return sink::Mask::causal;
  FS_CHECK_VALUE(s == "chunk", op, "mask must be 'causal' or 'chunk', got '", s, "'");
  return sink::Mask::chunk;
}

inline sink::Geometry sink_geometry(const char* op, int64_t sink_len, int64_t window, sink::Mask mask, int64_t chunk) {
  FS_CHECK_VALUE(sink_len >= 0, op, "sink must be >= 0, got ", sink_len);
  FS_CHECK_VALUE(window >= 1 || window == sink::kNoWindow, op, "window must be >= 1 or None (-1), got ", window);
  if (mask == sink::Mask::chunk) FS_CHECK_VALUE(chunk >= 1, op, "chunk_size must be >= 1 with mask='chunk', got ", chunk);
  sink::Geometry g;
  g.sink = sink_len;
  g.window = window;
  g.mask = mask;
  g.chunk = chunk;
  return g;
}

// q [B, T, Hq, D]; k, v [B, T, Hkv, D]: same float dtype and device, contiguous.
inline void check_sink_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_float_dtype(op, "q", q);
  check_dtype(op, "k", k, q.scalar_type());
  check_dtype(op, "v", v, q.scalar_type());
  FS_CHECK_VALUE(q.dim() == 4, op, "q must be [B, T, Hq, D], got ", shape_str(q.sizes()));
  FS_CHECK_VALUE(k.dim() == 4, op, "k must be [B, T, Hkv, D], got ", shape_str(k.sizes()));
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  check_shape(op, "k", k, {B, T, Hkv, D}, "[q.shape[0], q.shape[1], k.shape[2], q.shape[3]]");
  check_shape(op, "v", v, k.sizes(), "k.shape");
  FS_CHECK_VALUE(Hkv >= 1 && Hq % Hkv == 0, op, "q heads (", Hq, ") must be a multiple of k heads (", Hkv, ")");
  FS_CHECK_VALUE(Hq / Hkv <= 128, op, "at most 128 q heads per kv head, got ", Hq / Hkv);
  FS_CHECK_VALUE(D >= 2 && D <= sink::kMaxHeadDim && D % 2 == 0, op, "head dim must be even and in [2, ",
                 sink::kMaxHeadDim, "], got ", D);
  check_same_device(op, "k", k, q, "q");
  check_same_device(op, "v", v, q, "q");
  check_contiguous(op, "q", q);
  check_contiguous(op, "k", k);
  check_contiguous(op, "v", v);
}

// The paged cache of one layer: k_pool, v_pool [P, page_size, D] (q's dtype), page_table int32
// [B, Hkv, pages_per_head], lengths int64 [B], full_heads bool [Hkv] (optional).
inline void check_sink_cache(const char* op, const at::Tensor& k, const at::Tensor& k_pool, const at::Tensor& v_pool,
                             const at::Tensor& page_table, const at::Tensor& lengths,
                             const std::optional<at::Tensor>& full_heads) {
  const int64_t B = k.size(0), Hkv = k.size(2), D = k.size(3);
  check_dtype(op, "k_pool", k_pool, k.scalar_type());
  check_dtype(op, "v_pool", v_pool, k.scalar_type());
  FS_CHECK_VALUE(k_pool.dim() == 3 && k_pool.size(2) == D && k_pool.size(1) >= 1, op,
                 "k_pool must be [pages, page_size, D] with D = ", D, ", got ", shape_str(k_pool.sizes()));
  check_shape(op, "v_pool", v_pool, k_pool.sizes(), "k_pool.shape");
  check_dtype(op, "page_table", page_table, at::kInt);
  FS_CHECK_VALUE(page_table.dim() == 3 && page_table.size(0) == B && page_table.size(1) == Hkv, op,
                 "page_table must be [B, Hkv, pages_per_head] = [", B, ", ", Hkv, ", *], got ",
                 shape_str(page_table.sizes()));
  check_dtype(op, "lengths", lengths, at::kLong);
  check_shape(op, "lengths", lengths, {B}, "[B]");
  for (const auto* t : {&k_pool, &v_pool, &page_table, &lengths}) check_same_device(op, "cache tensors", *t, k, "k");
  check_contiguous(op, "k_pool", k_pool);
  check_contiguous(op, "v_pool", v_pool);
  check_contiguous(op, "page_table", page_table);
  check_contiguous(op, "lengths", lengths);
  if (full_heads.has_value()) {
    check_dtype(op, "full_heads", *full_heads, at::kBool);
    check_shape(op, "full_heads", *full_heads, {Hkv}, "[Hkv]");
    check_same_device(op, "full_heads", *full_heads, k, "k");
    check_contiguous(op, "full_heads", *full_heads);
  }
}

inline void check_sink_logits(const char* op, const at::Tensor& q, const std::optional<at::Tensor>& sl) {
  if (!sl.has_value()) return;
  check_dtype(op, "sink_logits", *sl, at::kFloat);
  check_shape(op, "sink_logits", *sl, {q.size(2)}, "[Hq]");
  check_same_device(op, "sink_logits", *sl, q, "q");
  check_contiguous(op, "sink_logits", *sl);
}

// Caller-owned outputs of sink_attention_out: out like q, lse fp32 [B, T, Hq]; contiguous, on q's
// device, overlapping no input and not each other.
inline void check_sink_outputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& out, const at::Tensor& lse) {
  check_dtype(op, "out", out, q.scalar_type());
  check_shape(op, "out", out, q.sizes(), "q.shape");
  check_dtype(op, "lse", lse, at::kFloat);
  check_shape(op, "lse", lse, q.sizes().slice(0, 3), "q.shape[:3]");
  check_same_device(op, "out", out, q, "q");
  check_same_device(op, "lse", lse, q, "q");
  check_contiguous(op, "out", out);
  check_contiguous(op, "lse", lse);
  for (const auto* t : {&q, &k, &v})
    FS_CHECK_VALUE(at::get_overlap_status(out, *t) == at::MemOverlapStatus::No &&
                       at::get_overlap_status(lse, *t) == at::MemOverlapStatus::No,
                   op, "out and lse must not overlap q, k or v");
  FS_CHECK_VALUE(at::get_overlap_status(out, lse) == at::MemOverlapStatus::No, op, "out and lse must not overlap");
}

// sink_cache_append's checks that need no tensor data, and its kernel arguments (pointers set).
inline sink::AppendArgs sink_append_args(const char* op, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_pool,
                                         at::Tensor& v_pool, const at::Tensor& page_table, at::Tensor& lengths,
                                         const std::optional<at::Tensor>& full_heads, int64_t sink_len, int64_t window,
                                         std::optional<double> ema_alpha) {
  check_sink_qkv(op, k, k, v);
  check_sink_cache(op, k, k_pool, v_pool, page_table, lengths, full_heads);
  sink::AppendArgs a;
  a.g = sink_geometry(op, sink_len, window, sink::Mask::causal, 0);
  if (ema_alpha.has_value()) {
    FS_CHECK_VALUE(*ema_alpha >= 0.0 && *ema_alpha <= 1.0, op, "ema_alpha must be in [0, 1], got ", *ema_alpha);
    FS_CHECK_VALUE(sink_len > 0, op, "ema_alpha needs sink > 0 (the EMA folds evicted tokens into sink slots)");
    a.ema = true;
    a.ema_alpha = float(*ema_alpha);
  }
  a.B = k.size(0); a.T = k.size(1); a.Hkv = k.size(2); a.D = k.size(3);
  a.page_size = k_pool.size(1);
  a.pages_per_head = page_table.size(2);
  a.pool_pages = k_pool.size(0);
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  a.k_pool = k_pool.mutable_data_ptr();
  a.v_pool = v_pool.mutable_data_ptr();
  a.page_table = page_table.const_data_ptr<int32_t>();
  a.lengths = lengths.mutable_data_ptr<int64_t>();
  if (full_heads.has_value()) a.full_heads = full_heads->const_data_ptr<bool>();
  return a;
}

// sink_attention's checks that need no tensor data, and its kernel arguments (pointers set; the
// cache fields only when a cache is given). Data checks (page-table ranges, capacity) are the
// CPU binding's: on CUDA they would cost a host sync.
inline sink::AttnArgs sink_attention_args(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& k_pool, const std::optional<at::Tensor>& v_pool,
    const std::optional<at::Tensor>& page_table, const std::optional<at::Tensor>& lengths,
    const std::optional<at::Tensor>& full_heads, int64_t sink_len, int64_t window, std::string_view positions,
    double rope_theta, std::string_view rope_style, std::string_view mask, int64_t chunk_size, double scale,
    double softcap, const std::optional<at::Tensor>& sink_logits, at::Tensor& out, at::Tensor& lse,
    bool caller_outputs) {
  check_sink_qkv(op, q, k, v);
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
  a.out = out.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr<float>();
  return a;
}

// The split-KV partial states for a.splits splits (split.h's layout), pointers set in `a`; an
// undefined tensor when a.splits == 1. Keep the returned tensor alive until the merge has run.
inline at::Tensor sink_split_workspace(sink::AttnArgs& a, const at::Tensor& q) {
  if (a.splits <= 1) return {};
  const int64_t rows = a.B * a.T * a.Hq;
  at::Tensor parts = at::empty({a.splits * rows * (a.D + 2)}, q.options().dtype(at::kFloat));
  a.part_m = parts.mutable_data_ptr<float>();
  a.part_l = a.part_m + a.splits * rows;
  a.part_acc = a.part_l + a.splits * rows;
  return parts;
}

}  // namespace flashstream
