// Sink KV cache, CPU append: the fused append / evict / EMA-sink update of one step, per (stream,
// kv head). Torch-free; host only; compiled once per ISA (see common/simd.h).
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/common/dtype.h"
#include "flashstream/sink/args.h"

#ifndef FLASHSTREAM_ISA
#error "compiled once per instruction set: define FLASHSTREAM_ISA (see CMakeLists.txt)"
#endif

namespace flashstream::sink::cpu {
inline namespace FLASHSTREAM_ISA {

template <typename T>
FS_INLINE const T* new_row(const AppendArgs& a, const T* base, int64_t b, int64_t h, int64_t t) {
  return base + ((b * a.T + t) * a.Hkv + h) * a.D;
}

// One (stream, kv head) pair; the caller advances lengths after every pair is done.
template <typename T>
void append_pair(const AppendArgs& a, int64_t b, int64_t h, float* tmp) {
  const int64_t n = a.lengths[b], D = a.D;
  const bool full = a.full_heads != nullptr && a.full_heads[h];
  const bool ring = !full && a.g.window != kNoWindow;
  for (int pool = 0; pool < 2; ++pool) {
    T* dst = static_cast<T*>(pool == 0 ? a.k_pool : a.v_pool);
    const T* src = static_cast<const T*>(pool == 0 ? a.k : a.v);
    auto at = [&](int64_t slot) -> T* {
      const int64_t off = slot_offset(a.page_table, a.pages_per_head, a.page_size, a.pool_pages, D, b, h, a.Hkv, slot);
      return off < 0 ? nullptr : dst + off;
    };
    // 1. sink tokens of this step, raw.
    if (ring) {
      for (int64_t p = n; p < n + a.T && p < a.g.sink; ++p) std::memcpy(at(p), new_row(a, src, b, h, p - n), D * sizeof(T));
      // 2. EMA: fold each token leaving the window into sink slot p % sink, in token order.
      if (a.ema && a.g.sink > 0) {
        const float alpha = a.ema_alpha, beta = 1.f - a.ema_alpha;
        for (int64_t p = evict_begin(a.g, n); p < evict_end(a.g, n, a.T); ++p) {
          const T* ev = p >= n ? new_row(a, src, b, h, p - n) : at(slot_of(a.g, p, false));
          T* sk = at(p % a.g.sink);
          for (int64_t d = 0; d < D; ++d) tmp[d] = alpha * to_float(sk[d]) + beta * to_float(ev[d]);
          for (int64_t d = 0; d < D; ++d) sk[d] = from_float<T>(tmp[d]);
        }
      }
    }
    // 3. tokens that keep a slot: the last `window` (ring) or all of them (full / no window).
    for (int64_t p = first_kept(a.g, n, a.T, full); p < n + a.T; ++p) {
      T* d = at(slot_of(a.g, p, full));
      if (d != nullptr) std::memcpy(d, new_row(a, src, b, h, p - n), D * sizeof(T));
    }
  }
}

template <typename T>
void append(const AppendArgs& a, int64_t begin, int64_t end, float* tmp) {
  for (int64_t w = begin; w < end; ++w) append_pair<T>(a, w / a.Hkv, w % a.Hkv, tmp);
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::sink::cpu
