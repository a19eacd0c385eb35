// Low-rank attention, CUDA kernels and a torch-free launcher.
//
// 1. project_kernel: P[:, roff(z) ..] = x A_z for z = q, k, v (fp32, rank blocks zero-padded to
//    kRankPad): a 64 x 64 tiled SIMT GEMM, 4 x 4 outputs per thread.
// 2. attend_kernel: one block per (sequence b, head h, tile of kBlock queries). It rebuilds its
//    query tile Q = (P_q B_q[:, head] + b_q) * scale in shared memory, then for each key block of
//    kBlock keys rebuilds K and V the same way (rank chunks of kRankChunk staged through shared
//    memory), scores them, and runs an fp32 online softmax with the output accumulators in
//    registers. Full q, k, v and the [S, S] scores never reach global memory.
// fp32 SIMT throughout (fp32 accumulation for every dtype): the "correct first" kernel, with no
// tensor cores yet; the CPU path shares its visibility math (attention_params.h).
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/attention_params.h"

// The block's dynamic shared memory; tests/cuda_emu/lowrank_attention_emu.cpp redefines it to run
// the kernels on the host.
#ifndef FS_LOWRANK_DYNAMIC_SMEM
#define FS_LOWRANK_DYNAMIC_SMEM(name) extern __shared__ float name[]
#endif

namespace flashstream::lowrank::cuda {

inline constexpr int kThreads = 256;
inline constexpr int kRankChunk = 16;

// ---- 1. projection ------------------------------------------------------------------------------

inline constexpr int kProjTile = 64;
inline constexpr int kProjK = 16;

template <typename T>
__global__ void __launch_bounds__(kThreads) project_kernel(const AttnArgs a) {
  __shared__ float xs[kProjK][kProjTile + 4];  // x tile, k-major
  __shared__ float as[kProjK][kProjTile + 4];  // A_z tile
  const int z = blockIdx.z;
  const int64_t M = a.B * a.S, Din = a.Din, r = a.r[z], RP = a.RP(), roff = a.roff(z);
  const int64_t m0 = int64_t(blockIdx.x) * kProjTile, c0 = int64_t(blockIdx.y) * kProjTile;
  if (c0 >= a.rp(z)) return;  // grid.y covers the widest projection
  const T* x = static_cast<const T*>(a.x);
  const T* A = static_cast<const T*>(a.A[z]);
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < Din; k0 += kProjK) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int e = tid + kThreads * q;
      const int row = e / kProjK, k = e % kProjK;
      const int64_t gm = m0 + row, gk = k0 + k;
      xs[k][row] = (gm < M && gk < Din) ? to_float(x[gm * Din + gk]) : 0.f;
      const int kk = e / kProjTile, c = e % kProjTile;
      const int64_t gk2 = k0 + kk, gc = c0 + c;
      as[kk][c] = (gk2 < Din && gc < r) ? to_float(A[gk2 * r + gc]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kProjK; ++k) {
      float xv[4], av[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = xs[k][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) av[j] = as[k][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], av[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty * 4 + i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gc = c0 + tx * 4 + j;
      if (gc < a.rp(z)) a.P[gm * RP + roff + gc] = acc[i][j];  // padded columns: exactly 0
    }
  }
}

// ---- 2. attention -------------------------------------------------------------------------------

// Queries per block and keys per key block for a head-dim bucket kDh (64, 128 or 256).
template <int kDh> inline constexpr int kBlock = kDh <= 128 ? 64 : 32;

template <int kDh>
struct Smem {
  static constexpr int BM = kBlock<kDh>;
  static constexpr int ldq = kDh, ldk = kDh + 1, ldv = kDh, lds = BM + 1, ldp = kRankChunk + 1;
  static constexpr int q = 0, k = q + BM * ldq, v = k + BM * ldk, s = v + BM * ldv, p = s + BM * lds,
                       b = p + BM * ldp, m = b + kRankChunk * kDh, l = m + BM, corr = l + BM, floats = corr + BM;
  static constexpr size_t bytes = size_t(floats) * 4;
};

// dst[i, d] = scale * (sum_c P[row0 + i, roff + c] Bz[c, col0 + d] + bias[col0 + d]) for i < nrows,
// d < Dh; zeros elsewhere in [kRows, kDh). Thread t owns column d = t % kDh of rows t / kDh + e * step.
template <typename T, int kDh, int kRows>
FS_DEVICE FS_INLINE void rebuild(const AttnArgs& a, int z, int64_t row0, int nrows, int64_t col0, float scale,
                                 float* dst, int ldd, float* ps, float* bs) {
  constexpr int kStep = kThreads / kDh, kPer = kRows * kDh / kThreads, ldp = kRankChunk + 1;
  const int tid = threadIdx.x, d = tid % kDh, i0 = tid / kDh;
  const int64_t r = a.r[z], RP = a.RP(), roff = a.roff(z), N = a.N;
  const T* Bz = static_cast<const T*>(a.Bf[z]);
  float acc[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) acc[e] = 0.f;
  for (int64_t rc = 0; rc < r; rc += kRankChunk) {
    __syncthreads();  // the previous chunk is consumed
    for (int e = tid; e < kRows * kRankChunk; e += kThreads) {
      const int i = e / kRankChunk, c = e % kRankChunk;
      ps[i * ldp + c] = (i < nrows && rc + c < r) ? a.P[(row0 + i) * RP + roff + rc + c] : 0.f;
    }
    for (int e = tid; e < kRankChunk * kDh; e += kThreads) {
      const int c = e / kDh, dd = e % kDh;
      bs[e] = (rc + c < r && dd < a.Dh) ? to_float(Bz[(rc + c) * N + col0 + dd]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kRankChunk; ++c) {
      const float bv = bs[c * kDh + d];
#pragma unroll
      for (int e = 0; e < kPer; ++e) acc[e] = fmaf(ps[(i0 + e * kStep) * ldp + c], bv, acc[e]);
    }
  }
  const T* bias = static_cast<const T*>(a.bias[z]);
  const float bd = (bias != nullptr && d < a.Dh) ? to_float(bias[col0 + d]) : 0.f;
#pragma unroll
  for (int e = 0; e < kPer; ++e) {
    const int i = i0 + e * kStep;
    dst[i * ldd + d] = (i < nrows && d < a.Dh) ? (acc[e] + bd) * scale : 0.f;
  }
}

template <typename T, int kDh>
__global__ void __launch_bounds__(kThreads) attend_kernel(const AttnArgs a) {
  using L = Smem<kDh>;
  constexpr int BM = L::BM, BN = L::BM;
  constexpr int kWarps = kThreads / 32;
  constexpr int kScorePer = BM * BN / kThreads, kScoreStep = kThreads / BN;
  constexpr int kOutPer = BM * kDh / kThreads, kOutStep = kThreads / kDh;
  FS_LOWRANK_DYNAMIC_SMEM(smem);
  float* qs = smem + L::q;
  float* ks = smem + L::k;
  float* vs = smem + L::v;
  float* ss = smem + L::s;
  float* ps = smem + L::p;
  float* bs = smem + L::b;
  float* ms = smem + L::m;
  float* ls = smem + L::l;
  float* cs = smem + L::corr;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // (b, h) on grid.x (up to 2^31 - 1 blocks), query tiles on grid.y.
  const int64_t t0 = int64_t(blockIdx.y) * BM, b = blockIdx.x / a.H, h = blockIdx.x % a.H;
  const int nq = int(a.S - t0 < BM ? a.S - t0 : BM);
  const int64_t col0 = h * a.Dh, rows0 = b * a.S;

  rebuild<T, kDh, BM>(a, 0, rows0 + t0, nq, col0, a.scale, qs, L::ldq, ps, bs);
  for (int i = tid; i < BM; i += kThreads) {
    ms[i] = -INFINITY;
    ls[i] = 0.f;
  }
  float o[kOutPer];
#pragma unroll
  for (int e = 0; e < kOutPer; ++e) o[e] = 0.f;
  const int od = tid % kDh, oi = tid / kDh;

  const int64_t kend = key_end(a, t0 + nq);
  for (int64_t p0 = 0; p0 < kend; p0 += BN) {
    const int nb = int(kend - p0 < BN ? kend - p0 : BN);
    rebuild<T, kDh, BN>(a, 1, rows0 + p0, nb, col0, 1.f, ks, L::ldk, ps, bs);
    rebuild<T, kDh, BN>(a, 2, rows0 + p0, nb, col0, 1.f, vs, L::ldv, ps, bs);
    __syncthreads();
    // Scores: thread owns key j = tid % BN of rows tid / BN + e * kScoreStep.
    {
      const int j = tid % BN, i0 = tid / BN;
      float sc[kScorePer];
#pragma unroll
      for (int e = 0; e < kScorePer; ++e) sc[e] = 0.f;
      for (int d = 0; d < kDh; ++d) {
        const float kv = ks[j * L::ldk + d];
#pragma unroll
        for (int e = 0; e < kScorePer; ++e) sc[e] = fmaf(qs[(i0 + e * kScoreStep) * L::ldq + d], kv, sc[e]);
      }
#pragma unroll
      for (int e = 0; e < kScorePer; ++e) ss[(i0 + e * kScoreStep) * L::lds + j] = sc[e];
    }
    __syncthreads();
    // Online softmax: warp w owns rows w, w + kWarps, ...; lanes cover the keys.
    for (int i = warp; i < BM; i += kWarps) {
      float* row = ss + i * L::lds;
      float v[BN / 32];
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < BN / 32; ++c) {
        const int j = lane + 32 * c;
        const bool ok = i < nq && j < nb && key_visible(a, b, t0 + i, p0 + j);
        v[c] = ok ? row[j] : -INFINITY;
        mx = fmaxf(mx, v[c]);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_old = ms[i];
      const float m_new = fmaxf(m_old, mx);
      float psum = 0.f;
#pragma unroll
      for (int c = 0; c < BN / 32; ++c) {
        const float pj = v[c] == -INFINITY ? 0.f : expf(v[c] - m_new);
        row[lane + 32 * c] = pj;
        psum += pj;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
      __syncwarp();
      if (lane == 0) {
        // m_new = -inf: nothing visible yet; keep the (zero) state unchanged.
        const float c = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
        cs[i] = c;
        ls[i] = ls[i] * c + psum;
        ms[i] = m_new;
      }
    }
    __syncthreads();
    // O = O * corr + P V: thread owns head dim od of rows oi + e * kOutStep.
#pragma unroll
    for (int e = 0; e < kOutPer; ++e) {
      const int i = oi + e * kOutStep;
      float acc = o[e] * cs[i];
      for (int j = 0; j < nb; ++j) acc = fmaf(ss[i * L::lds + j], vs[j * L::ldv + od], acc);
      o[e] = acc;
    }
    // the next block's rebuild begins with a barrier before it overwrites ps / bs, and writes
    // ks / vs only after its own barriers, which every thread reaches after this loop.
  }
  __syncthreads();
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int e = 0; e < kOutPer; ++e) {
    const int i = oi + e * kOutStep;
    if (i >= nq || od >= a.Dh) continue;
    const float lr = ls[i];
    out[(rows0 + t0 + i) * a.N + col0 + od] = from_float<T>(lr > 0.f ? o[e] / lr : 0.f);
  }
}

#if defined(__CUDACC__)  // the launchers are nvcc-only; the kernels above also compile as host C++
template <typename T, int kDh>
cudaError_t launch_attend_dh(const AttnArgs& a, cudaStream_t stream) {
  constexpr size_t smem = Smem<kDh>::bytes;
  cudaError_t err = cudaFuncSetAttribute(attend_kernel<T, kDh>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(a.B * a.H), unsigned((a.S + kBlock<kDh> - 1) / kBlock<kDh>));
  attend_kernel<T, kDh><<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

// a.P must point to B * S * a.RP() floats of device memory.
template <typename T>
cudaError_t launch_lowrank_attention(const AttnArgs& a, cudaStream_t stream) {
  if (a.B * a.S * a.N == 0) return cudaSuccess;
  const int64_t widest = a.rp(0) > a.rp(1) ? (a.rp(0) > a.rp(2) ? a.rp(0) : a.rp(2)) : (a.rp(1) > a.rp(2) ? a.rp(1) : a.rp(2));
  const dim3 pgrid(unsigned((a.B * a.S + kProjTile - 1) / kProjTile), unsigned((widest + kProjTile - 1) / kProjTile), 3);
  project_kernel<T><<<pgrid, kThreads, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (a.Dh <= 64) return launch_attend_dh<T, 64>(a, stream);
  if (a.Dh <= 128) return launch_attend_dh<T, 128>(a, stream);
  return launch_attend_dh<T, 256>(a, stream);
}

#endif  // __CUDACC__

}  // namespace flashstream::lowrank::cuda
