// Sink KV cache: the raw-pointer arguments of the attention and append kernels (CPU and CUDA).
// Torch-free. Layouts (all contiguous, row-major):
//   q [B, T, Hq, D]; k, v [B, T, Hkv, D]; out [B, T, Hq, D]; lse [B, T, Hq] fp32
//   k_pool, v_pool [P, page_size, D]: pages of ONE kv head's tokens (per-head page tables)
//   page_table [B, Hkv, pages_per_head] int32; lengths [B] int64 (tokens before this step)
//   full_heads [Hkv] bool; sink_logits [Hq] fp32
#pragma once
#include <cstdint>

#include "flashstream/sink/params.h"

namespace flashstream::sink {

struct AttnArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* k_pool = nullptr;  // null: no cache (offline attention), lengths are all 0
  const void* v_pool = nullptr;
  const int32_t* page_table = nullptr;
  const int64_t* lengths = nullptr;
  const bool* full_heads = nullptr;   // null: no full heads
  const float* sink_logits = nullptr;  // null: none
  void* out = nullptr;
  float* lse = nullptr;
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t page_size = 1, pages_per_head = 0, pool_pages = 0;
  Geometry g;
  Positions positions = Positions::cache;
  RopeStyle rope_style = RopeStyle::half;
  double rope_theta = 10000.0;
  float scale = 1.0f;
  float softcap = 0.0f;  // 0: none
  // Split-KV (split.h): with splits > 1 the attention kernels leave partial softmax states in
  // part_m / part_l / part_acc instead of out / lse, and a merge pass writes out / lse.
  int64_t splits = 1;
  float* part_m = nullptr;
  float* part_l = nullptr;
  float* part_acc = nullptr;
  // CPU only: rotary rows for key positions p < key_rope_len, cos / sin of p * inv_freq[f] at
  // [p * D / 2 + f] (key positions in both frames are ranks from 0, so one table serves every
  // work item). Null: the kernel builds the rows per key block.
  const float* key_cos = nullptr;
  const float* key_sin = nullptr;
  int64_t key_rope_len = 0;
};

struct AppendArgs {
  const void* k = nullptr;  // [B, T, Hkv, D]
  const void* v = nullptr;
  void* k_pool = nullptr;
  void* v_pool = nullptr;
  const int32_t* page_table = nullptr;
  int64_t* lengths = nullptr;  // advanced by T
  const bool* full_heads = nullptr;
  int64_t B = 0, T = 0, Hkv = 0, D = 0;
  int64_t page_size = 1, pages_per_head = 0, pool_pages = 0;
  Geometry g;
  bool ema = false;
  float ema_alpha = 1.0f;
};

// Where slot s of (b, h) lives in a pool, in elements; -1 when the page table can't hold it or
// names a page outside the pool. The CPU bindings reject such inputs before launching; the CUDA
// kernels (which can't check without a host sync) skip such slots, so nothing is ever written or
// read outside the pool.
FS_HOST_DEVICE FS_INLINE int64_t slot_offset(const int32_t* page_table, int64_t pages_per_head, int64_t page_size,
                                             int64_t pool_pages, int64_t D, int64_t b, int64_t h, int64_t Hkv,
                                             int64_t slot) {
  const int64_t page_idx = slot / page_size;
  if (page_idx >= pages_per_head) return -1;
  const int64_t page = page_table[(b * Hkv + h) * pages_per_head + page_idx];
  if (page < 0 || page >= pool_pages) return -1;
  return (page * page_size + slot % page_size) * D;
}

}  // namespace flashstream::sink
