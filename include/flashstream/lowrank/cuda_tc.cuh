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
#include <cstring>
#include <type_traits>

#include "flashstream/common/cuda_utils.cuh"
#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/params.h"
#include "flashstream/lowrank/tc_params.h"

#ifndef FS_LOWRANK_TC_SMEM
#define FS_LOWRANK_TC_SMEM(name) extern __shared__ __align__(16) uint16_t name[]
#endif

namespace flashstream::lowrank::tc {

// 16 bytes global -> shared, asynchronous; zero-filled (nothing read) when !valid.
FS_DEVICE FS_INLINE void cp_async16(uint16_t* smem, const uint16_t* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
#elif defined(FS_LOWRANK_TC_HOST_EMU)
  if (valid) std::memcpy(smem, gmem, 16);
  else std::memset(smem, 0, 16);
#endif
}

FS_DEVICE FS_INLINE void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `Pending` committed groups are still in flight.
template <int Pending>
FS_DEVICE FS_INLINE void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#endif
}

// c += a b for one m16n8k16 tile (row.col, fp32 accumulators).
template <typename T>
FS_DEVICE FS_INLINE void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // the dispatch rule never launches this below sm_80
#elif defined(FS_LOWRANK_TC_HOST_MMA)
  FS_LOWRANK_TC_HOST_MMA(c, a, b, (std::is_same_v<T, bf16_t>));
#endif
}

// ldmatrix.m8n8.x4(.trans).b16: four 8 x 8 matrices of 16-bit elements, each lane giving one row
// address (tc_params.h, ldsm_*); with .trans each matrix arrives transposed.
template <bool Trans>
FS_DEVICE FS_INLINE void ldmatrix_x4(uint32_t (&d)[4], const uint16_t* row) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(s));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(s));
  }
#elif defined(FS_LOWRANK_TC_HOST_LDSM)
  FS_LOWRANK_TC_HOST_LDSM(d, row, Trans);
#endif
}

// A fragment (16 x 16) of a row-major [m][k] shared buffer (row stride LD halves) at s.
template <int LD>
FS_DEVICE FS_INLINE void load_frag_a(uint32_t (&a)[4], const uint16_t* s, int lane) {
  ldmatrix_x4<false>(a, s + ldsm_a_row(lane) * LD + ldsm_a_col(lane));
}

// B fragments of two neighbouring n8 tiles (16 x 16 of a row-major [k][n] shared buffer, row
// stride LD halves, at s): b[0..1] for columns 0-7, b[2..3] for 8-15.
template <int LD>
FS_DEVICE FS_INLINE void load_frag_b2(uint32_t (&b)[4], const uint16_t* s, int lane) {
  ldmatrix_x4<true>(b, s + ldsm_b_k(lane) * LD + ldsm_b_n(lane));
}

template <typename T>
FS_DEVICE FS_INLINE uint32_t pack2(float lo, float hi) {
  return uint32_t(from_float<T>(lo).bits) | (uint32_t(from_float<T>(hi).bits) << 16);
}

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
