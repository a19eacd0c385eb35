// Sink KV cache, CUDA kernels: attention over (paged cache + new tokens) with in-kernel rotary and
// an fp32 online softmax, and the fused append / evict / EMA-sink update. Torch-free launchers.
//
// Attention: one block per (stream b, kv head h, tile of queries, slice of the GQA group). Its
// rows (<= kRows: queries x group heads) share every key block, which the block loads through the
// page table, converts to fp32 and rotates once (params.h's two frames) into shared memory. Warp w
// owns rows w, w + kWarps, ...; lane j scores key j of the block, then each lane accumulates
// P @ V for the head dims d = lane + 32 e. All bookkeeping (lengths) is read on the device, so a
// step is graph-capturable. Split-KV (split.h): when the blocks alone would leave SMs idle (decode
// of few streams), grid.y also enumerates key splits; each block then leaves its rows' partial
// softmax states and merge_kernel finishes. This SIMT kernel takes fp32, decode, split-KV and
// other head dims; bf16 / fp16 prefill with at least 64 rows runs on tensor cores instead
// (cuda_tc.cuh, dispatch rule in tc_params.h).
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "flashstream/common/dtype.h"
#include "flashstream/sink/args.h"
#include "flashstream/sink/cuda_keys.cuh"
#include "flashstream/sink/split.h"

namespace flashstream::sink::cuda {

inline constexpr int kWarps = 4;
inline constexpr int kThreads = kWarps * 32;
inline constexpr int kRows = 16;                   // rows per block
inline constexpr int kRowsPerWarp = kRows / kWarps;
inline constexpr int kKeys = 32;                   // keys per block iteration (one per lane)

// Queries per block and group heads per block for a GQA group of g heads.
inline int64_t heads_per_block(int64_t g) { return g < kRows ? g : kRows; }
inline int64_t queries_per_block(int64_t g) { return kRows / heads_per_block(g); }

struct SmemLayout {
  int64_t D, ks;  // ks: padded key row stride (D + 1: lanes reading key rows hit distinct banks)
  FS_HOST_DEVICE int64_t q_floats() const { return int64_t(kRows) * D; }
  FS_HOST_DEVICE int64_t bytes() const { return (2 * q_floats() + 2 * kKeys * ks) * 4; }
};
inline SmemLayout smem_layout(int64_t D) { return SmemLayout{D, D + 1}; }

// kDpl: head dims per lane (D <= 32 * kDpl).
template <typename T, int kDpl>
__global__ void __launch_bounds__(kThreads) attend_kernel(const AttnArgs a) {
  extern __shared__ float smem[];
  const SmemLayout L{a.D, a.D + 1};
  float* qs = smem;                 // [kRows, D] queries, sink frame (scaled, rotated)
  float* qw = qs + L.q_floats();    // [kRows, D] queries, window frame
  float* ks = qw + L.q_floats();    // [kKeys, D + 1] keys of a block (rotated)
  float* vs = ks + kKeys * L.ks;    // [kKeys, D + 1]
  __shared__ Visible vis[kRows];
  __shared__ int64_t range[3];      // sink_end, win_lo, win_hi

  const int64_t G = a.Hq / a.Hkv, D = a.D, half = D / 2;
  const int64_t hpb = G < kRows ? G : kRows, qpb = kRows / hpb;
  const int64_t b = blockIdx.x / a.Hkv, h = blockIdx.x % a.Hkv;
  const int64_t split = int64_t(blockIdx.y) % a.splits;
  const int64_t t0 = int64_t(blockIdx.y) / a.splits * qpb, g0 = int64_t(blockIdx.z) * hpb;
  const int64_t nq = a.T - t0 < qpb ? a.T - t0 : qpb;
  const int64_t nh = G - g0 < hpb ? G - g0 : hpb;
  const int64_t rows = nq * nh;
  const int64_t n = a.lengths != nullptr ? a.lengths[b] : 0;
  const bool full = a.full_heads != nullptr && a.full_heads[h];
  const bool rotary = a.positions != Positions::none;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  if (threadIdx.x < nq) vis[threadIdx.x] = visible(a.g, n, a.T, n + t0 + threadIdx.x, full);
  __syncthreads();
  if (threadIdx.x == 0) {  // the keys any row of the tile sees (params.h tile_keys)
    const TileKeys keys = tile_keys(vis, nq);
    range[0] = keys.sink_end;
    range[1] = keys.win_lo;
    range[2] = keys.win_hi;
  }
  __syncthreads();
  const int64_t sink_end = range[0], win_lo = range[1], win_hi = range[2];
  const int64_t base = win_lo == INT64_MAX ? 0 : win_lo;
  const int64_t win_end = win_lo == INT64_MAX ? base : win_hi;

  // Queries: row r = (query r / nh, head g0 + r % nh), scaled, rotated into both frames.
  const T* q = static_cast<const T*>(a.q);
  for (int64_t idx = threadIdx.x; idx < rows * half; idx += kThreads) {
    const int64_t r = idx / half, f = idx % half, t = r / nh;
    const T* src = q + ((b * a.T + t0 + t) * a.Hq + h * G + g0 + r % nh) * D;
    const int i1 = rope_first(a.rope_style, int(f), int(half)), i2 = rope_second(a.rope_style, int(f), int(half));
    float x1 = to_float(src[i1]) * a.scale, x2 = to_float(src[i2]) * a.scale;
    float y1 = x1, y2 = x2;
    if (rotary) {
      const double inv = pow(a.rope_theta, -2.0 * double(f) / double(D));
      const int64_t i = n + t0 + t;
      rope_pair(inv, query_pos_sink_frame(a.positions, vis[t], i), x1, x2);
      rope_pair(inv, query_pos_window_frame(a.positions, vis[t], i, base), y1, y2);
    }
    qs[r * D + i1] = x1;
    qs[r * D + i2] = x2;
    qw[r * D + i1] = y1;
    qw[r * D + i2] = y2;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDpl];
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) {
    m[k] = -INFINITY;
    l[k] = 0.f;
#pragma unroll
    for (int e = 0; e < kDpl; ++e) acc[k][e] = 0.f;
  }

  const T* knew = static_cast<const T*>(a.k);
  const T* vnew = static_cast<const T*>(a.v);
  const T* kpool = static_cast<const T*>(a.k_pool);
  const T* vpool = static_cast<const T*>(a.v_pool);

  for (int frame = 0; frame < 2; ++frame) {
    const KeyRange keys = split_frame_keys(frame, sink_end, base, win_end, split, a.splits);
    const int64_t k_begin = keys.begin, k_end = keys.end;
    const float* qf = frame == 0 ? qs : qw;
    for (int64_t p0 = k_begin; p0 < k_end; p0 += kKeys) {
      const int nb = int(k_end - p0 < kKeys ? k_end - p0 : kKeys);
      __syncthreads();  // the previous block's keys are consumed (and the queries are written)
      for (int64_t idx = threadIdx.x; idx < int64_t(kKeys) * half; idx += kThreads) {
        const int j = int(idx / half), f = int(idx % half);
        const int i1 = rope_first(a.rope_style, f, int(half)), i2 = rope_second(a.rope_style, f, int(half));
        float x1 = 0.f, x2 = 0.f, w1 = 0.f, w2 = 0.f;
        if (j < nb) {
          const int64_t p = p0 + j;
          const T* kr = key_ptr(a, knew, kpool, b, h, n, full, p);
          const T* vr = key_ptr(a, vnew, vpool, b, h, n, full, p);
          if (kr != nullptr && vr != nullptr) {
            x1 = to_float(kr[i1]);
            x2 = to_float(kr[i2]);
            w1 = to_float(vr[i1]);
            w2 = to_float(vr[i2]);
            if (rotary) rope_pair(pow(a.rope_theta, -2.0 * double(f) / double(D)), frame == 0 ? p : p - base, x1, x2);
          }
        }
        ks[j * L.ks + i1] = x1;
        ks[j * L.ks + i2] = x2;
        vs[j * L.ks + i1] = w1;
        vs[j * L.ks + i2] = w2;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        const int64_t r = warp + k * kWarps;
        if (r >= rows) break;
        const Visible vi = vis[r / nh];
        int64_t jlo = frame == 0 ? 0 : vi.lo - p0, jhi = frame == 0 ? vi.sv - p0 : vi.hi - p0;
        jlo = jlo < 0 ? 0 : jlo;
        jhi = jhi > nb ? nb : jhi;
        if (jlo >= jhi) continue;  // warp-uniform
        const float* qr = qf + r * D;
        float s = -INFINITY;
        if (lane >= jlo && lane < jhi) {
          const float* kj = ks + lane * L.ks;
          float dot = 0.f;
          for (int64_t d = 0; d < D; ++d) dot = fmaf(qr[d], kj[d], dot);
          s = a.softcap > 0.f ? a.softcap * tanhf(dot / a.softcap) : dot;
        }
        float mx = s;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_new = fmaxf(m[k], mx);
        const float corr = expf(m[k] - m_new);
        const float pj = (lane >= jlo && lane < jhi) ? expf(s - m_new) : 0.f;
        float ps = pj;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
        l[k] = l[k] * corr + ps;
        m[k] = m_new;
#pragma unroll
        for (int e = 0; e < kDpl; ++e) acc[k][e] *= corr;
        for (int j = int(jlo); j < int(jhi); ++j) {
          const float pjj = __shfl_sync(0xffffffffu, pj, j);
          const float* vj = vs + j * L.ks;
#pragma unroll
          for (int e = 0; e < kDpl; ++e) {
            const int64_t d = lane + 32 * e;
            if (d < D) acc[k][e] = fmaf(pjj, vj[d], acc[k][e]);
          }
        }
      }
    }
  }

  if (a.splits > 1) {  // leave the partial states; merge_kernel finishes
    const int64_t stride = a.B * a.T * a.Hq;
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
      const int64_t r = warp + k * kWarps;
      if (r >= rows) break;
      const int64_t at = split * stride + (b * a.T + t0 + r / nh) * a.Hq + h * G + g0 + r % nh;
#pragma unroll
      for (int e = 0; e < kDpl; ++e) {
        const int64_t d = lane + 32 * e;
        if (d < D) a.part_acc[at * D + d] = acc[k][e];
      }
      if (lane == 0) {
        a.part_m[at] = m[k];
        a.part_l[at] = l[k];
      }
    }
    return;
  }

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) {
    const int64_t r = warp + k * kWarps;
    if (r >= rows) break;
    const int64_t t = t0 + r / nh, hq = h * G + g0 + r % nh;
    const RowEnd end = row_end(m[k], l[k], a.sink_logits != nullptr ? a.sink_logits + hq : nullptr);
    T* dst = out + ((b * a.T + t) * a.Hq + hq) * D;
#pragma unroll
    for (int e = 0; e < kDpl; ++e) {
      const int64_t d = lane + 32 * e;
      if (d < D) dst[d] = from_float<T>(acc[k][e] * end.scale);
    }
    if (lane == 0 && a.lse != nullptr) a.lse[(b * a.T + t) * a.Hq + hq] = end.lse;
  }
}

// Split-KV finish: one block per row of B * T * Hq, threads over head dims.
template <typename T>
__global__ void __launch_bounds__(kThreads) merge_kernel(const AttnArgs a) {
  const int64_t row = blockIdx.x, stride = a.B * a.T * a.Hq;
  const float* sl = a.sink_logits != nullptr ? a.sink_logits + row % a.Hq : nullptr;
  const MergedRow mr = merge_row_stats(a.part_m + row, a.part_l + row, a.splits, stride, sl);
  T* dst = static_cast<T*>(a.out) + row * a.D;
  for (int64_t d = threadIdx.x; d < a.D; d += kThreads) {
    float o = 0.f;
    for (int64_t s = 0; s < a.splits; ++s)
      o = fmaf(split_weight(mr, a.part_m[s * stride + row]), a.part_acc[(s * stride + row) * a.D + d], o);
    dst[d] = from_float<T>(o);
  }
  if (threadIdx.x == 0 && a.lse != nullptr) a.lse[row] = mr.m + logf(mr.l);
}

// Blocks of the attention grid before any split: (stream, kv head) x query tiles x group slices.
inline int64_t attend_blocks(const AttnArgs& a) {
  const int64_t G = a.Hq / a.Hkv, hpb = heads_per_block(G), qpb = queries_per_block(G);
  return a.B * a.Hkv * ((a.T + qpb - 1) / qpb) * ((G + hpb - 1) / hpb);
}

template <typename T, int kDpl>
cudaError_t launch_attend_dpl(const AttnArgs& a, cudaStream_t stream) {
  const int64_t G = a.Hq / a.Hkv, hpb = heads_per_block(G), qpb = queries_per_block(G);
  const dim3 grid(unsigned(a.B * a.Hkv), unsigned((a.T + qpb - 1) / qpb * a.splits), unsigned((G + hpb - 1) / hpb));
  const size_t smem = size_t(smem_layout(a.D).bytes());
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(attend_kernel<T, kDpl>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  attend_kernel<T, kDpl><<<grid, kThreads, smem, stream>>>(a);
  if (a.splits > 1) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    merge_kernel<T><<<unsigned(a.B * a.T * a.Hq), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_attend(const AttnArgs& a, cudaStream_t stream) {
  if (a.B * a.T * a.Hq == 0) return cudaSuccess;
  if (a.D <= 64) return launch_attend_dpl<T, 2>(a, stream);
  if (a.D <= 128) return launch_attend_dpl<T, 4>(a, stream);
  return launch_attend_dpl<T, 8>(a, stream);
}

// ---- append / evict / EMA-sink: one block per stream (its kv heads inside), so the block that
// ---- advances lengths[b] is the only one that reads it ----------------------------------------

template <typename T>
FS_DEVICE FS_INLINE T* pool_row(const AppendArgs& a, T* pool, int64_t b, int64_t h, int64_t slot) {
  const int64_t off = slot_offset(a.page_table, a.pages_per_head, a.page_size, a.pool_pages, a.D, b, h, a.Hkv, slot);
  return off < 0 ? nullptr : pool + off;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) append_kernel(const AppendArgs a) {
  const int64_t b = blockIdx.x, n = a.lengths[b], D = a.D, T_ = a.T;
  const bool ring_any = a.g.window != kNoWindow;
  for (int pool = 0; pool < 2; ++pool) {
    T* dst = static_cast<T*>(pool == 0 ? a.k_pool : a.v_pool);
    const T* src = static_cast<const T*>(pool == 0 ? a.k : a.v);
    auto new_row = [&](int64_t h, int64_t t) { return src + ((b * T_ + t) * a.Hkv + h) * D; };
    // 1. sink tokens of this step, raw (streaming heads; full heads take every token in 3).
    if (ring_any) {
      const int64_t ns = (a.g.sink < n + T_ ? a.g.sink : n + T_) - n;
      for (int64_t idx = threadIdx.x; idx < (ns > 0 ? ns : 0) * a.Hkv * D; idx += kThreads) {
        const int64_t d = idx % D, h = (idx / D) % a.Hkv, p = n + idx / (D * a.Hkv);
        if (a.full_heads != nullptr && a.full_heads[h]) continue;
        T* row = pool_row(a, dst, b, h, p);
        if (row != nullptr) row[d] = new_row(h, p - n)[d];
      }
    }
    __syncthreads();
    // 2. EMA: each token leaving the window, in order, into sink slot p % sink (one thread per (h, d)).
    if (ring_any && a.ema && a.g.sink > 0) {
      const float alpha = a.ema_alpha, beta = 1.f - a.ema_alpha;
      for (int64_t idx = threadIdx.x; idx < a.Hkv * D; idx += kThreads) {
        const int64_t d = idx % D, h = idx / D;
        if (a.full_heads != nullptr && a.full_heads[h]) continue;
        for (int64_t p = evict_begin(a.g, n); p < evict_end(a.g, n, T_); ++p) {
          const T* ev = p >= n ? new_row(h, p - n) : pool_row(a, dst, b, h, slot_of(a.g, p, false));
          T* sk = pool_row(a, dst, b, h, p % a.g.sink);
          if (ev == nullptr || sk == nullptr) continue;
          sk[d] = from_float<T>(alpha * to_float(sk[d]) + beta * to_float(ev[d]));
        }
      }
    }
    __syncthreads();
    // 3. tokens that keep a slot.
    for (int64_t h = 0; h < a.Hkv; ++h) {
      const bool full = a.full_heads != nullptr && a.full_heads[h];
      const int64_t first = first_kept(a.g, n, T_, full);
      for (int64_t idx = threadIdx.x; idx < (n + T_ - first) * D; idx += kThreads) {
        const int64_t d = idx % D, p = first + idx / D;
        T* row = pool_row(a, dst, b, h, slot_of(a.g, p, full));
        if (row != nullptr) row[d] = new_row(h, p - n)[d];
      }
    }
  }
  __syncthreads();  // every thread has read n
  if (threadIdx.x == 0) a.lengths[b] = n + T_;
}

template <typename T>
cudaError_t launch_append(const AppendArgs& a, cudaStream_t stream) {
  if (a.B == 0) return cudaSuccess;
  append_kernel<T><<<unsigned(a.B), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace flashstream::sink::cuda
