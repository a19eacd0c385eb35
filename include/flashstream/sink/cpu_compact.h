// Sink KV cache, CPU compaction: per (stream, kv head), the kept rows move down in increasing order
// (in place, safe because keep is strictly ascending; see compact.h). Torch-free; host only;
// compiled once per ISA. A row move is a copy of D elements of one dtype, so it is written on the
// element size (2 or 4 bytes) and the SIMD layer's width comes from the compiler's memcpy.
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/sink/compact.h"

#ifndef FLASHSTREAM_ISA
#error "compiled once per instruction set: define FLASHSTREAM_ISA (see CMakeLists.txt)"
#endif

namespace flashstream::sink::cpu {
inline namespace FLASHSTREAM_ISA {

// (stream, kv head) pairs [begin, end) of B * Hkv. Does not touch lengths (the binding sets them
// once every pair is done). The binding has checked every index, so offsets are never -1 here.
inline void compact(const CompactArgs& a, int64_t begin, int64_t end) {
  const int64_t row_bytes = a.D * a.elem_bytes;
  for (int64_t w = begin; w < end; ++w) {
    const int64_t b = w / a.Hkv, h = w % a.Hkv;
    for (int64_t j = 0; j < a.n; ++j) {
      const int64_t src = keep_at(a, b, h, j);
      if (src == j) continue;  // already in place (the sinks, and every slot before the first gap)
      const int64_t from = compact_slot_offset(a, b, h, src) * a.elem_bytes;
      const int64_t to = compact_slot_offset(a, b, h, j) * a.elem_bytes;
      std::memmove(static_cast<char*>(a.k_pool) + to, static_cast<const char*>(a.k_pool) + from, row_bytes);
      std::memmove(static_cast<char*>(a.v_pool) + to, static_cast<const char*>(a.v_pool) + from, row_bytes);
    }
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::sink::cpu
