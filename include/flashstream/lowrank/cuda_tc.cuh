// lowrank_linear's forward on tensor cores for bf16 / fp16 (sm_80+): mma.sync.m16n8k16 with fp32
// accumulation, cp.async double-buffered x / A / B chunks, the [BM, r] intermediate T in shared
// memory rounded to the op's dtype (as the unfused chain rounds x @ A), bias + activation in the
// epilogue. Tiling, layout, fragment maps and the dispatch rule are tc_params.h's. Also runs the
// backward's grad_x = (G B^T) A^T (csrc/cuda/lowrank.cu).
//
// NEVER RUN ON A GPU: written and compile-checked (sm_80, sm_90a) without one. What has run is
// the host emulation (tests/cuda_emu/lowrank_tc_emu.cpp): these kernels as plain C++ with 256
// host threads a block, cp.async as synchronous copies and mma.sync emulated from the PTX ISA's
// fragment tables; it checks index math, layouts, barriers and masking, not the real cp.async
// asynchrony, the PTX itself, timing or occupancy. Fragments come by ldmatrix (emulated from the
// PTX tables too); no wgmma / TMA (sm_90a) yet. ptxas (nvcc 13.0), capped at 128 registers for
// two CTAs per SM: spills of at most 24 bytes in the 128 x 128 and 64 x 256 tiles. No speed is claimed.
#pragma once
#include <cstdint>

#include "flashstream/common/cuda_utils.cuh"
#include "flashstream/common/dtype.h"
#include "flashstream/common/mma.cuh"
#include "flashstream/lowrank/params.h"
#include "flashstream/lowrank/tc_params.h"

#ifndef FS_LOWRANK_TC_SMEM
#define FS_LOWRANK_TC_SMEM(name) extern __shared__ __align__(16) uint16_t name[]
#endif

namespace flashstream::lowrank::tc {

// cp.async / mma.sync / ldmatrix wrappers: common/mma.cuh (shared with sink attention).
using mma::cp_async16;
using mma::cp_async_commit;
using mma::cp_async_wait;
using mma::load_frag_a;
using mma::load_frag_b2;
using mma::mma_16816;
using mma::pack2;

template <typename T, int BM_, int RB>
__global__ void __launch_bounds__(kThreads, 2) linear_tc_kernel(const LinearProblem p, const EpilogueArgs e) {
  using L = Layout<BM_, RB>;
  constexpr int BM = L::BM;
  FS_LOWRANK_TC_SMEM(smem);
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const auto* xg = static_cast<const uint16_t*>(p.x.ptr);
  const auto* ag = static_cast<const uint16_t*>(p.a.ptr);
  const auto* bg = static_cast<const uint16_t*>(p.b.ptr);

  // ---- stage 1: T = x A ---------------------------------------------------------------------
  const int64_t chunks1 = ceil_div(p.K, kBK);
  auto load1 = [&](int s, int64_t c) {
    uint16_t* xs = smem + L::x_offset(s);
    uint16_t* as = smem + L::a_offset(s);
    const int64_t k0 = c * kBK;
    for (int v = tid; v < BM * (kBK / kVec); v += kThreads) {
      const int row = x_piece_row(v), col = x_piece_col(v);
      const int64_t m = m0 + row, k = k0 + col;
      const bool ok = m < p.M && k < p.K;  // K % 8 == 0: a piece is wholly in or out
      cp_async16(xs + row * L::ldx + col, ok ? xg + m * p.x.rs + k : xg, ok);
    }
    for (int v = tid; v < kBK * (RB / kVec); v += kThreads) {
      const int row = v / (RB / kVec), col = (v % (RB / kVec)) * kVec;
      const int64_t k = k0 + row;
      const bool ok = k < p.K && col < p.r;  // columns r..RB: zeros, so T's padding is 0
      cp_async16(as + row * L::lda + col, ok ? ag + k * p.a.rs + col : ag, ok);
    }
  };
  float acc1[L::mi][L::nj1][4];
#pragma unroll
  for (int i = 0; i < L::mi; ++i)
#pragma unroll
    for (int j = 0; j < L::nj1; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc1[i][j][q] = 0.0f;
  load1(0, 0);
  cp_async_commit();
  for (int64_t c = 0; c < chunks1; ++c) {
    if (c + 1 < chunks1) load1(int((c + 1) % kStages), c + 1);  // its buffer's readers passed the barrier below
    cp_async_commit();
    cp_async_wait<1>();  // chunk c has landed (this thread's pieces) ...
    __syncthreads();     // ... and everyone's
    const uint16_t* xs = smem + L::x_offset(int(c % kStages));
    const uint16_t* as = smem + L::a_offset(int(c % kStages));
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[L::mi][4];
#pragma unroll
      for (int i = 0; i < L::mi; ++i) load_frag_a<L::ldx>(af[i], xs + (warp_m * L::wm + i * 16) * L::ldx + kk, lane);
#pragma unroll
      for (int j = 0; j < L::nj1; j += 2) {
        uint32_t bf[4];
        load_frag_b2<L::lda>(bf, as + kk * L::lda + warp_n * L::wn1 + j * 8, lane);
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
#pragma unroll
        for (int i = 0; i < L::mi; ++i) {
          mma_16816<T>(acc1[i][j], af[i], b0);
          mma_16816<T>(acc1[i][j + 1], af[i], b1);
        }
      }
    }
    __syncthreads();  // chunk c's buffer may be refilled
  }
  uint16_t* ts = smem + L::t_offset;
#pragma unroll
  for (int i = 0; i < L::mi; ++i)
#pragma unroll
    for (int j = 0; j < L::nj1; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = warp_m * L::wm + i * 16 + frag_c_row(lane, 2 * h);
        const int col = warp_n * L::wn1 + j * 8 + frag_c_col(lane, 2 * h);
        *reinterpret_cast<uint32_t*>(ts + row * L::ldt + col) = pack2<T>(acc1[i][j][2 * h], acc1[i][j][2 * h + 1]);
      }
  // T is read by other warps only after the first barrier of the stage-2 loop.

  // ---- stage 2: y = act(T B + bias), kBN columns at a time ----------------------------------
  const int chunks_r = int(ceil_div(p.r, kBK));  // <= RB / kBK; T columns r..RB are zero
  const int64_t total = ceil_div(p.N, kBN) * chunks_r;
  auto load2 = [&](int s, int64_t it) {
    uint16_t* bs = smem + L::b_offset(s);
    const int64_t n0 = (it / chunks_r) * kBN, k0 = (it % chunks_r) * kBK;
    for (int v = tid; v < kBK * (kBN / kVec); v += kThreads) {
      const int row = v / (kBN / kVec), col = (v % (kBN / kVec)) * kVec;
      const int64_t k = k0 + row, n = n0 + col;
      const bool ok = k < p.r && n < p.N;  // N % 8 == 0: a piece is wholly in or out
      cp_async16(bs + row * L::ldb + col, ok ? bg + k * p.b.rs + n : bg, ok);
    }
  };
  float acc2[L::mi][L::nj2][4];
  load2(0, 0);  // stage 1's last barrier freed the staging buffers
  cp_async_commit();
  for (int64_t it = 0; it < total; ++it) {
    const int kc = int(it % chunks_r);
    if (kc == 0) {
#pragma unroll
      for (int i = 0; i < L::mi; ++i)
#pragma unroll
        for (int j = 0; j < L::nj2; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc2[i][j][q] = 0.0f;
    }
    if (it + 1 < total) load2(int((it + 1) % kStages), it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint16_t* bs = smem + L::b_offset(int(it % kStages));
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[L::mi][4];
#pragma unroll
      for (int i = 0; i < L::mi; ++i)
        load_frag_a<L::ldt>(af[i], ts + (warp_m * L::wm + i * 16) * L::ldt + kc * kBK + kk, lane);
#pragma unroll
      for (int j = 0; j < L::nj2; j += 2) {
        uint32_t bf[4];
        load_frag_b2<L::ldb>(bf, bs + kk * L::ldb + warp_n * L::wn2 + j * 8, lane);
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
#pragma unroll
        for (int i = 0; i < L::mi; ++i) {
          mma_16816<T>(acc2[i][j], af[i], b0);
          mma_16816<T>(acc2[i][j + 1], af[i], b1);
        }
      }
    }
    __syncthreads();
    if (kc == chunks_r - 1) {  // the tile is complete: epilogue straight from registers
      const int64_t n0 = (it / chunks_r) * kBN;
      const T* bias = static_cast<const T*>(e.bias);
#pragma unroll
      for (int i = 0; i < L::mi; ++i)
#pragma unroll
        for (int j = 0; j < L::nj2; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t m = m0 + warp_m * L::wm + i * 16 + frag_c_row(lane, 2 * h);
            const int64_t n = n0 + warp_n * L::wn2 + j * 8 + frag_c_col(lane, 2 * h);  // even; n + 1 < N when n < N
            if (m >= p.M || n >= p.N) continue;
            float z0 = acc2[i][j][2 * h], z1 = acc2[i][j][2 * h + 1];
            if (bias != nullptr) {
              z0 += to_float(bias[n]);
              z1 += to_float(bias[n + 1]);
            }
            *reinterpret_cast<uint32_t*>(static_cast<T*>(e.out) + m * e.ldo + n) =
                pack2<T>(activate(e.act, z0), activate(e.act, z1));
          }
    }
  }
}

// run(BM, RB) (std::integral_constant's) with the tile for rank r and M rows on a GPU with `sms`
// multiprocessors; launch_linear_tc's choice, shared with the host emulation.
template <typename Run>
auto with_tile(int64_t r, int64_t M, int sms, Run&& run) {
  using B64 = std::integral_constant<int, 64>;
  using B128 = std::integral_constant<int, 128>;
  using B256 = std::integral_constant<int, 256>;
  const int rb = rank_bucket(r);
  const bool tall = block_rows(rb, M, sms) == 128;
  switch (rb) {
    case 64: return tall ? run(B128{}, B64{}) : run(B64{}, B64{});
    case 128: return tall ? run(B128{}, B128{}) : run(B64{}, B128{});
    default: return run(B64{}, B256{});
  }
}

#if defined(__CUDACC__)
// For problems that pass use_tensor_cores (the caller checks), forward epilogue, y with ldo = N.
template <typename T>
cudaError_t launch_linear_tc(const LinearProblem& p, const EpilogueArgs& e, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return with_tile(p.r, p.M, sms, [&](auto bm, auto rb) {
    using L = Layout<decltype(bm)::value, decltype(rb)::value>;
    auto kernel = linear_tc_kernel<T, L::BM, decltype(rb)::value>;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::bytes);
    if (err != cudaSuccess) return err;
    kernel<<<dim3(unsigned(ceil_div(p.M, L::BM))), kThreads, size_t(L::bytes), stream>>>(p, e);
    return cudaGetLastError();
  });
}
#endif

}  // namespace flashstream::lowrank::tc
