// Sink KV cache: the index math shared by the CPU and CUDA kernels (so CPU tests exercise it).
// Torch-free. See python/flashstream/cache/sink_cache.py for the design in prose.
//
// Stream indices p are 0-based positions in a stream. A query at stream index i sees
//   sink part   [0, sv)       sv = min(sink, hi)
//   window part [lo, hi)      lo = max(sink, lo_raw)
// with, for mask=causal, hi = i + 1 and lo_raw = i - window + 1, and for mask=chunk (chunk
// [c0, c1) holding i), hi = c1 and lo_raw = c0 - window. Full heads and window=None use
// lo_raw = 0 (every token). The two parts are disjoint (lo >= sink >= sv), and never empty together
// (i itself is always visible).
//
// Cache slots of one (stream, kv head): streaming heads keep the sink tokens in slots [0, sink) and
// the window as a ring in slots [sink, sink + window); full heads keep token p in slot p. Slot s
// lives in page page_table[s / page_size] at row s % page_size.
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::sink {

enum class Mask : int { causal = 0, chunk = 1 };
enum class Positions : int { cache = 0, absolute = 1, none = 2 };
enum class RopeStyle : int { half = 0, interleaved = 1 };

inline constexpr int64_t kNoWindow = -1;
inline constexpr int64_t kMaxHeadDim = 256;

struct Geometry {
  int64_t sink = 0;
  int64_t window = kNoWindow;  // kNoWindow: keep every token
  Mask mask = Mask::causal;
  int64_t chunk = 0;            // mask=chunk: chunk length, chunks start at the stream's first new token
};

// The visible ranges of query i (stream index) for a stream whose step starts at n (tokens before
// the step) with T new tokens; `full`: a full head (sees every token).
struct Visible {
  int64_t sv;  // sink part [0, sv)
  int64_t lo;  // window part [lo, hi)
  int64_t hi;
};

FS_HOST_DEVICE FS_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
FS_HOST_DEVICE FS_INLINE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

FS_HOST_DEVICE FS_INLINE Visible visible(const Geometry& g, int64_t n, int64_t T, int64_t i, bool full) {
  int64_t hi, lo_raw;
  if (g.mask == Mask::causal) {
    hi = i + 1;
    lo_raw = i - g.window + 1;
  } else {
    const int64_t c0 = n + ((i - n) / g.chunk) * g.chunk;
    hi = imin(c0 + g.chunk, n + T);
    lo_raw = c0 - g.window;
  }
  if (full || g.window == kNoWindow) lo_raw = 0;
  Visible v;
  v.sv = imin(g.sink, hi);
  v.lo = imax(g.sink, lo_raw);
  v.hi = hi;
  return v;
}

// The keys any of a tile's nq queries sees: sinks [0, sink_end) and window [win_lo, win_hi);
// win_lo = INT64_MAX (and win_hi = 0) when no query sees a window key. Every kernel visits these.
struct TileKeys {
  int64_t sink_end, win_lo, win_hi;
};
FS_HOST_DEVICE FS_INLINE TileKeys tile_keys(const Visible* vis, int64_t nq) {
  TileKeys k{0, INT64_MAX, 0};
  for (int64_t t = 0; t < nq; ++t) {
    k.sink_end = imax(k.sink_end, vis[t].sv);
    if (vis[t].lo < vis[t].hi) {
      k.win_lo = imin(k.win_lo, vis[t].lo);
      k.win_hi = imax(k.win_hi, vis[t].hi);
    }
  }
  return k;
}

// "cache" positions: a visible key's rank among the keys its query sees. Sink keys have rank p;
// a window key has rank p + offset with offset = sv - lo.
FS_HOST_DEVICE FS_INLINE int64_t window_rank_offset(const Visible& v) { return v.sv - v.lo; }
FS_HOST_DEVICE FS_INLINE int64_t rank_of(const Visible& v, int64_t p) { return p < v.sv ? p : p + window_rank_offset(v); }

// Rotary is relative (<R(a)q, R(b)k> = <R(a-b)q, k>), so a kernel may rotate every key of a tile
// once, in a frame of its own choosing, and rotate each query to match. Two frames per tile:
//   sink keys   at their rank p (also their absolute index: they are the first tokens);
//   window keys at p - base, with base the smallest window index any query of the tile sees.
// These return the query positions that make the scores exact; all stay small in "cache" mode
// (bounded by sink + window + T), whatever the stream length, so no precision is lost to large
// angles. In "absolute" mode the sink frame needs the query's stream index itself.
FS_HOST_DEVICE FS_INLINE int64_t query_pos_sink_frame(Positions mode, const Visible& v, int64_t i) {
  return mode == Positions::absolute ? i : rank_of(v, i);
}
FS_HOST_DEVICE FS_INLINE int64_t query_pos_window_frame(Positions mode, const Visible& v, int64_t i, int64_t base) {
  return mode == Positions::absolute ? i - base : rank_of(v, i) - window_rank_offset(v) - base;
}

// ---- slots -------------------------------------------------------------------------------------

// Slots a (stream, kv head) needs: sink + window for streaming heads, every token for full ones.
FS_HOST_DEVICE FS_INLINE int64_t streaming_slots(const Geometry& g) { return g.sink + g.window; }

FS_HOST_DEVICE FS_INLINE int64_t slot_of(const Geometry& g, int64_t p, bool full) {
  if (full || g.window == kNoWindow || p < g.sink) return p;
  return g.sink + (p - g.sink) % g.window;
}

// Eviction by the append of T tokens to a stream of n: streaming-head tokens in
// [evict_begin, evict_end) leave the window (in this order; EMA-sink folds each into sink slot
// p % sink). Empty for full heads and window=None.
FS_HOST_DEVICE FS_INLINE int64_t evict_begin(const Geometry& g, int64_t n) { return imax(g.sink, n - g.window); }
FS_HOST_DEVICE FS_INLINE int64_t evict_end(const Geometry& g, int64_t n, int64_t T) {
  return imax(evict_begin(g, n), n + T - g.window);
}
// Tokens of the step that get a slot: sinks [n, min(sink, n+T)) and, for streaming heads, the
// last `window` tokens [max(sink, n+T-window), n+T); every token of a full head.
FS_HOST_DEVICE FS_INLINE int64_t first_kept(const Geometry& g, int64_t n, int64_t T, bool full) {
  if (full || g.window == kNoWindow) return n;
  return imax(imax(g.sink, n), n + T - g.window);
}

// ---- rotary ------------------------------------------------------------------------------------

// Pair (a, b) of feature f (f < D/2) rotated by angle pos * theta^(-2f/D): "half" pairs x[f] with
// x[f + D/2] (GPT-NeoX rotate-half), "interleaved" pairs x[2f] with x[2f + 1] (GPT-J).
FS_HOST_DEVICE FS_INLINE int rope_first(RopeStyle s, int f, int half) { return s == RopeStyle::half ? f : 2 * f; }
FS_HOST_DEVICE FS_INLINE int rope_second(RopeStyle s, int f, int half) { return s == RopeStyle::half ? f + half : 2 * f + 1; }

}  // namespace flashstream::sink
