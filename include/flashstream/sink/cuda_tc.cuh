// Sink attention on tensor cores for bf16 / fp16 (sm_80+), FlashAttention-2 style: chunked prefill
// with in-kernel rotary over (paged cache + new tokens), same semantics as the SIMT kernel of
// cuda.cuh (visibility per query, the two rotary frames, full heads, chunk mask, softcap, sink
// logits, lse). Tiling, layout, maps and the dispatch rule are tc_params.h's.
//
// Per CTA (stream b, kv head h, 64 rows), per frame: queries scaled, rotated in fp32 and rounded
// to the dtype in shared memory, the warp's Q fragments then in registers. Key blocks of 64 rows
// come through the page table by cp.async, double-buffered (block i + 1 in flight during block i);
// K is rotated in place (fp32, fp64 angle reduced in fp64: cuda_keys.cuh rope_cos_sin) and
// rounded; S = Q K^T (mma.sync m16n8k16, fp32 accumulators), masked per (row, key) by the rows'
// Visible, softcap, online softmax (row max / sum over the quad of lanes sharing a row), P
// re-packed from the accumulator layout into A fragments (rounded to the dtype, as FlashAttention
// does) and O += P V with V by ldmatrix.trans. Rotated keys and queries are rounded to the dtype
// before the mma, as FlashInfer does; the SIMT kernel keeps them in fp32.
//
// NEVER RUN ON A GPU: written and compile-checked (sm_80, sm_90a) without one. What has run is the
// host emulation (tests/cuda_emu/sink_tc_emu.cpp): this kernel as plain C++ with 128 host threads a
// block, mma.sync / ldmatrix emulated from the PTX fragment tables and cp.async landing at issue or
// only at its wait_group (common/mma.cuh's hooks), against a float64 reference. It checks index
// math, layouts, barriers and masking, not the PTX itself, device memory ordering, timing or
// occupancy. No speed is claimed.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "flashstream/common/dtype.h"
#include "flashstream/common/mma.cuh"
#include "flashstream/sink/args.h"
#include "flashstream/sink/cuda_keys.cuh"
#include "flashstream/sink/split.h"
#include "flashstream/sink/tc_params.h"

#ifndef FS_SINK_TC_SMEM
#define FS_SINK_TC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace flashstream::sink::tc {

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attend_tc_kernel(const AttnArgs a) {
  using L = Layout<D>;
  constexpr int half = D / 2, ld = L::ld;
  FS_SINK_TC_SMEM(smem);
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem + L::q_offset);
  double* inv_freq = reinterpret_cast<double*>(smem + L::freq_offset);
  Visible* vis = reinterpret_cast<Visible*>(smem + L::vis_offset);
  int64_t* range = reinterpret_cast<int64_t*>(smem + L::range_offset);

  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int64_t G = a.Hq / a.Hkv;
  const int64_t hpb = heads_per_block(G), qpb = queries_per_block(G);
  const int64_t b = blockIdx.x / a.Hkv, h = blockIdx.x % a.Hkv;
  const int64_t t0 = int64_t(blockIdx.y) * qpb, g0 = int64_t(blockIdx.z) * hpb;
  const int64_t nq = a.T - t0 < qpb ? a.T - t0 : qpb;
  const int64_t nh = G - g0 < hpb ? G - g0 : hpb;
  const int64_t rows = nq * nh;
  const int64_t n = a.lengths != nullptr ? a.lengths[b] : 0;
  const bool full = a.full_heads != nullptr && a.full_heads[h];
  const bool rotary = a.positions != Positions::none;
  const T* knew = static_cast<const T*>(a.k);
  const T* vnew = static_cast<const T*>(a.v);
  const T* kpool = static_cast<const T*>(a.k_pool);
  const T* vpool = static_cast<const T*>(a.v_pool);

  if (tid < half) inv_freq[tid] = pow(a.rope_theta, -2.0 * double(tid) / double(D));
  if (tid < nq) vis[tid] = visible(a.g, n, a.T, n + t0 + tid, full);
  __syncthreads();
  if (tid == 0) {  // the keys any row of the tile sees (params.h tile_keys)
    const TileKeys keys = tile_keys(vis, nq);
    range[0] = keys.sink_end;
    range[1] = keys.win_lo;
    range[2] = keys.win_hi;
  }
  __syncthreads();
  const int64_t sink_end = range[0], win_lo = range[1], win_hi = range[2];
  const int64_t base = win_lo == INT64_MAX ? 0 : win_lo;
  const int64_t win_end = win_lo == INT64_MAX ? base : win_hi;

  // Key blocks: the sink frame's keys, then the window frame's, kKeys at a time.
  const KeyRange keys0 = split_frame_keys(0, sink_end, base, win_end, 0, 1);
  const KeyRange keys1 = split_frame_keys(1, sink_end, base, win_end, 0, 1);
  const int64_t blocks0 = (keys0.end - keys0.begin + kKeys - 1) / kKeys;
  const int64_t blocks = blocks0 + (keys1.end - keys1.begin + kKeys - 1) / kKeys;
  auto block_begin = [&](int64_t it) { return it < blocks0 ? keys0.begin + it * kKeys : keys1.begin + (it - blocks0) * kKeys; };
  auto block_end = [&](int64_t it) { return it < blocks0 ? keys0.end : keys1.end; };

  // cp.async of key block `it` into stage s: this thread's row of K or V (zeros past the block's
  // end or for a slot outside the page table / pool: they read as zero keys, as in cuda.cuh).
  const int crow = copy_row(tid);
  const bool cv = copy_is_v(tid);
  auto issue = [&](int64_t it, int s) {
    const int64_t p = block_begin(it) + crow;
    const T* row = p < block_end(it) ? cuda::key_ptr(a, cv ? vnew : knew, cv ? vpool : kpool, b, h, n, full, p) : nullptr;
    uint16_t* dst = reinterpret_cast<uint16_t*>(smem + (cv ? L::v_offset(s) : L::k_offset(s))) + crow * ld;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(row != nullptr ? row : knew);  // any valid address
#pragma unroll
    for (int c = 0; c < D / kVec; ++c) mma::cp_async16(dst + c * kVec, src + c * kVec, row != nullptr);
  };

  // Queries of one frame into qs: row r = (query r / nh, head g0 + r % nh), scaled, rotated,
  // rounded. Rows past `rows` are zero (their scores are masked anyway; zeros keep NaN out of the mma).
  const T* q = static_cast<const T*>(a.q);
  auto write_queries = [&](int frame) {
    for (int idx = tid; idx < kRows * half; idx += kThreads) {
      const int r = idx / half, f = idx % half;
      const int i1 = rope_first(a.rope_style, f, half), i2 = rope_second(a.rope_style, f, half);
      float x1 = 0.f, x2 = 0.f;
      if (r < rows) {
        const int64_t t = r / nh, i = n + t0 + t;
        const T* src = q + ((b * a.T + t0 + t) * a.Hq + h * G + g0 + r % nh) * D;
        x1 = to_float(src[i1]) * a.scale;
        x2 = to_float(src[i2]) * a.scale;
        if (rotary) {
          float c, sn;
          cuda::rope_cos_sin(inv_freq[f],
                             frame == 0 ? query_pos_sink_frame(a.positions, vis[t], i)
                                        : query_pos_window_frame(a.positions, vis[t], i, base),
                             c, sn);
          cuda::rotate_pair(c, sn, x1, x2);
        }
      }
      qs[r * ld + i1] = from_float<T>(x1).bits;
      qs[r * ld + i2] = from_float<T>(x2).bits;
    }
  };

  // The visible ranges of this lane's two rows (empty for rows past `rows`).
  int64_t row_sv[2], row_lo[2], row_hi[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = lane_row(warp, lane, i);
    const Visible v = r < rows ? vis[r / nh] : Visible{0, 0, 0};
    row_sv[i] = v.sv;
    row_lo[i] = v.lo;
    row_hi[i] = v.hi;
  }

  float o[D / 8][4];  // O rows (lane_row i = 0: o[.][0..1], i = 1: o[.][2..3]), dims 8 dt + frag_c_col
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's part of the row sums
  uint32_t qf[D / 16][4];                                  // this warp's Q fragments, current frame

  if (blocks > 0) issue(0, 0);
  mma::cp_async_commit();
  for (int64_t it = 0; it < blocks; ++it) {
    const int s = int(it % kStages), frame = it < blocks0 ? 0 : 1;
    const int64_t p0 = block_begin(it), p1 = block_end(it);
    const int nb = int(p1 - p0 < kKeys ? p1 - p0 : kKeys);
    // Stage (it + 1) % 2 was last read in iteration it - 1, before its closing barrier.
    if (it + 1 < blocks) issue(it + 1, int((it + 1) % kStages));
    mma::cp_async_commit();
    const bool new_frame = it == 0 || it == blocks0;
    if (new_frame) write_queries(frame);  // qs's readers loaded their fragments before an earlier barrier
    mma::cp_async_wait<1>();  // block it has landed (this thread's rows) ...
    __syncthreads();          // ... and everyone's; qs is written
    uint16_t* ks = reinterpret_cast<uint16_t*>(smem + L::k_offset(s));
    const uint16_t* vs = reinterpret_cast<const uint16_t*>(smem + L::v_offset(s));
    if (rotary) {  // K in place at the frame's positions, rounded to the dtype
      for (int idx = tid; idx < kKeys * half; idx += kThreads) {
        const int j = idx / half, f = idx % half;
        if (j >= nb) continue;  // zeros
        const int i1 = rope_first(a.rope_style, f, half), i2 = rope_second(a.rope_style, f, half);
        float x1 = to_float(T{ks[j * ld + i1]}), x2 = to_float(T{ks[j * ld + i2]}), c, sn;
        cuda::rope_cos_sin(inv_freq[f], frame == 0 ? p0 + j : p0 + j - base, c, sn);
        cuda::rotate_pair(c, sn, x1, x2);
        ks[j * ld + i1] = from_float<T>(x1).bits;
        ks[j * ld + i2] = from_float<T>(x2).bits;
      }
      __syncthreads();
    }
    if (new_frame) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) mma::load_frag_a<ld>(qf[kk], qs + 16 * warp * ld + 16 * kk, lane);
    }

    // Does any row of this warp see a key of the block? (Warp-uniform.)
    bool sees = false;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      sees |= frame == 0 ? row_sv[i] > p0 : (row_lo[i] < row_hi[i] && row_lo[i] < p0 + nb && row_hi[i] > p0);
    if (__any_sync(0xffffffffu, sees)) {
      float sc[kKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[nt][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; nt += 2) {
          uint32_t kf[4];
          mma::ldmatrix_x4<false>(kf, ks + (8 * nt + ldsm_k_key(lane)) * ld + 16 * kk + ldsm_k_dim(lane));
          const uint32_t b0[2] = {kf[0], kf[1]}, b1[2] = {kf[2], kf[3]};
          mma::mma_16816<T>(sc[nt], qf[kk], b0);
          mma::mma_16816<T>(sc[nt + 1], qf[kk], b1);
        }

      // Mask, softcap, online softmax. Row i's values sit in sc[.][2 i], sc[.][2 i + 1] of the 4
      // lanes of a quad (lane % 4); the row max and sum reduce over the quad.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e >> 1, jk = lane_key(nt, lane, e);
          const int64_t p = p0 + jk;
          const bool ok = jk < nb && (frame == 0 ? p < row_sv[i] : (p >= row_lo[i] && p < row_hi[i]));
          float v = sc[nt][e];
          if (a.softcap > 0.f) v = a.softcap * tanhf(v / a.softcap);
          v = ok ? v : -INFINITY;
          sc[nt][e] = v;
          mx[i] = fmaxf(mx[i], v);
        }
      float corr[2], m_use[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float m_new = fmaxf(m[i], mx[i]);
        m_use[i] = m_new == -INFINITY ? 0.f : m_new;  // no key seen yet: exp(-inf - 0) = 0, never NaN
        corr[i] = expf(m[i] - m_use[i]);
        m[i] = m_new;
        l[i] *= corr[i];
      }
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e >> 1;
          const float pv = expf(sc[nt][e] - m_use[i]);
          sc[nt][e] = pv;
          l[i] += pv;
        }
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][0] *= corr[0];
        o[dt][1] *= corr[0];
        o[dt][2] *= corr[1];
        o[dt][3] *= corr[1];
      }

      // O += P V: the accumulators of n8 tiles 2 kc, 2 kc + 1 (keys 16 kc .. 16 kc + 15) are the
      // A fragment of k step kc: a0 = (row g, keys 2t, 2t+1), a1 = (row g + 8, same keys), a2, a3
      // the same 8 keys further (PTX fragment tables, mma_frag.h).
#pragma unroll
      for (int kc = 0; kc < kKeys / 16; ++kc) {
        const uint32_t pa[4] = {mma::pack2<T>(sc[2 * kc][0], sc[2 * kc][1]), mma::pack2<T>(sc[2 * kc][2], sc[2 * kc][3]),
                                mma::pack2<T>(sc[2 * kc + 1][0], sc[2 * kc + 1][1]),
                                mma::pack2<T>(sc[2 * kc + 1][2], sc[2 * kc + 1][3])};
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {
          uint32_t vf[4];
          mma::load_frag_b2<ld>(vf, vs + 16 * kc * ld + 8 * dt, lane);
          const uint32_t b0[2] = {vf[0], vf[1]}, b1[2] = {vf[2], vf[3]};
          mma::mma_16816<T>(o[dt], pa, b0);
          mma::mma_16816<T>(o[dt + 1], pa, b1);
        }
      }
    }
    __syncthreads();  // stage s and qs may be refilled
  }

  // Epilogue: row sums over the quad, the sink logit in the denominator, 1 / l, lse.
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int r = lane_row(warp, lane, i);
    if (r >= rows) continue;
    const int64_t t = t0 + r / nh, hq = h * G + g0 + r % nh;
    const RowEnd end = row_end(m[i], l[i], a.sink_logits != nullptr ? a.sink_logits + hq : nullptr);
    T* dst = out + ((b * a.T + t) * a.Hq + hq) * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int d = 8 * dt + mma::frag_c_col(lane, 2 * i);
      dst[d] = from_float<T>(o[dt][2 * i] * end.scale);
      dst[d + 1] = from_float<T>(o[dt][2 * i + 1] * end.scale);
    }
    if (lane % 4 == 0 && a.lse != nullptr) a.lse[(b * a.T + t) * a.Hq + hq] = end.lse;
  }
}

// The grid of the tensor-core kernel: (stream, kv head) x query tiles x group slices.
inline dim3 attend_tc_grid(const AttnArgs& a) {
  const int64_t G = a.Hq / a.Hkv, hpb = heads_per_block(G), qpb = queries_per_block(G);
  return dim3(unsigned(a.B * a.Hkv), unsigned((a.T + qpb - 1) / qpb), unsigned((G + hpb - 1) / hpb));
}

#if defined(__CUDACC__)
template <typename T, int D>
cudaError_t launch_attend_tc_d(const AttnArgs& a, cudaStream_t stream) {
  auto kernel = attend_tc_kernel<T, D>;
  constexpr int smem = Layout<D>::bytes;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<attend_tc_grid(a), kThreads, size_t(smem), stream>>>(a);
  return cudaGetLastError();
}

// For problems that pass use_tensor_cores (the caller checks): bf16 / fp16, D 64 or 128, no split.
template <typename T>
cudaError_t launch_attend_tc(const AttnArgs& a, cudaStream_t stream) {
  static_assert(std::is_same_v<T, bf16_t> || std::is_same_v<T, f16_t>, "tensor cores: bf16 / fp16 only");
  if (a.B * a.T * a.Hq == 0) return cudaSuccess;
  return a.D == 64 ? launch_attend_tc_d<T, 64>(a, stream) : launch_attend_tc_d<T, 128>(a, stream);
}
#endif

}  // namespace flashstream::sink::tc
