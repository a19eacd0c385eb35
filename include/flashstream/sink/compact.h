// Sink KV cache, token-granular compaction (SirLLM-style retention): the raw-pointer arguments and
// the slot math shared by the CPU and CUDA kernels. Torch-free.
//
// For each (stream b, kv head h), the kept slots keep[b, h, 0..n) (strictly ascending, each below
// the stream's length) move to slots 0..n, in order; then lengths[b] = n. Because keep[j] >= j,
// moving j = 0, 1, ... in increasing order never overwrites a slot that a later j still has to
// read: that is what makes the move safe in place on the CPU, and why the CUDA kernel moves in
// ordered tiles (read a whole tile, then write it).
//
// Meant for caches whose slot is the token's rank (window=None / full heads): after compaction the
// kept tokens sit at ranks 0..n in stream order, so positions="cache" rotates them at exactly the
// positions a cache that had only ever held them would use.
#pragma once
#include <cstdint>

#include "flashstream/sink/args.h"

namespace flashstream::sink {

struct CompactArgs {
  void* k_pool = nullptr;  // [P, page_size, D]
  void* v_pool = nullptr;
  const int32_t* page_table = nullptr;  // [B, Hkv, pages_per_head]
  int64_t* lengths = nullptr;           // [B]: set to n
  const void* keep = nullptr;           // [B, Hkv, n], int32 or int64 (keep_is_int64)
  bool keep_is_int64 = true;
  int64_t B = 0, Hkv = 0, n = 0, D = 0, elem_bytes = 4;
  int64_t page_size = 1, pages_per_head = 0, pool_pages = 0;
};

// keep[b, h, j] as int64, whatever its storage type.
FS_HOST_DEVICE FS_INLINE int64_t keep_at(const CompactArgs& a, int64_t b, int64_t h, int64_t j) {
  const int64_t i = (b * a.Hkv + h) * a.n + j;
  return a.keep_is_int64 ? static_cast<const int64_t*>(a.keep)[i] : int64_t(static_cast<const int32_t*>(a.keep)[i]);
}

// Element offset of slot s of (b, h) in a pool, or -1 when s is negative or the page table (or the
// pool) can't hold it: the CUDA kernel skips such slots, so bad indices never reach memory.
FS_HOST_DEVICE FS_INLINE int64_t compact_slot_offset(const CompactArgs& a, int64_t b, int64_t h, int64_t s) {
  if (s < 0) return -1;
  return slot_offset(a.page_table, a.pages_per_head, a.page_size, a.pool_pages, a.D, b, h, a.Hkv, s);
}

}  // namespace flashstream::sink
