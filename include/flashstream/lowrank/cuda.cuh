// Low-rank matmul chains on CUDA. One CTA owns a block of BM rows: the rank-space intermediate
// of its rows ([BM, r], fp32) is computed into shared memory and consumed there, so it never
// reaches global memory; bias, activation and the dtype conversion happen in the store. Every
// product is fp32-accumulated SIMT FMA (exact fp32 semantics for every storage dtype), staged
// through shared memory in BK x BN tiles; each thread owns a (BM/16) x 4 patch of a BM x 64 tile.
// Not yet tuned: no tensor cores, no cp.async pipelining. The math (activation, epilogue,
// strided operands) is params.h's, shared with the CPU path.
#pragma once
#include <cstdint>

#include "flashstream/common/cuda_utils.cuh"
#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/params.h"

namespace flashstream::lowrank::cuda {

inline constexpr int kThreads = 256;
inline constexpr int kBN = 64;  // output columns per tile: 16 threads x 4
inline constexpr int kBK = 32;  // k per staged chunk
inline constexpr int kPad = 4;  // row padding of shared fp32 buffers: rows land on different banks

FS_HOST_DEVICE FS_INLINE int64_t smem_ld(int64_t cols) { return round_up(cols, kBN) + kPad; }

template <typename T>
FS_DEVICE FS_INLINE float at(const Strided& s, int64_t i, int64_t j) {
  return to_float(static_cast<const T*>(s.ptr)[s.offset(i, j)]);
}

// Shared staging for one product: left chunk [BM][kBK + 1], right chunk [kBK][kBN].
template <int BM>
struct Stage {
  float* xs;
  float* ws;
  static constexpr int64_t floats() { return int64_t(BM) * (kBK + 1) + int64_t(kBK) * kBN; }
};

// acc = sum_k left(row, k) * right(rk0 + k, n0 + col) over k < K for this thread's patch. left is
// shared fp32 (ls, row stride lds, CTA-local rows) or, when ls is null, global rows m0.. of
// `left` (TL, rows >= M read as 0). Right columns >= N and rows k >= K read as 0. Every thread of
// the CTA must call it (it synchronises).
template <int BM, typename TL, typename TR>
FS_DEVICE void tile_product(float (&acc)[BM / 16][4], const float* ls, int64_t lds, const Strided& left, int64_t m0,
                            int64_t M, const Strided& right, int64_t rk0, int64_t n0, int64_t N, int64_t K,
                            const Stage<BM>& st) {
  constexpr int TM = BM / 16;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    __syncthreads();  // the previous chunk's readers are done
    for (int idx = tid; idx < kBK * kBN; idx += kThreads) {
      const int kk = idx / kBN, nn = idx % kBN;
      const int64_t k = k0 + kk, n = n0 + nn;
      st.ws[idx] = (k < K && n < N) ? at<TR>(right, rk0 + k, n) : 0.0f;
    }
    if (ls == nullptr) {
      for (int idx = tid; idx < BM * kBK; idx += kThreads) {
        const int i = idx / kBK, kk = idx % kBK;
        const int64_t m = m0 + i, k = k0 + kk;
        st.xs[i * (kBK + 1) + kk] = (m < M && k < K) ? at<TL>(left, m, k) : 0.0f;
      }
    }
    __syncthreads();
    const int kc = K - k0 < kBK ? int(K - k0) : kBK;
    for (int kk = 0; kk < kc; ++kk) {
      const float4 b = reinterpret_cast<const float4*>(st.ws + kk * kBN)[tx];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int row = ty * TM + i;
        const float a = ls ? ls[row * lds + k0 + kk] : st.xs[row * (kBK + 1) + kk];
        acc[i][0] = fmaf(a, b.x, acc[i][0]);
        acc[i][1] = fmaf(a, b.y, acc[i][1]);
        acc[i][2] = fmaf(a, b.z, acc[i][2]);
        acc[i][3] = fmaf(a, b.w, acc[i][3]);
      }
    }
  }
}

// The patch into a shared fp32 buffer at columns n0.. (set, or add when accumulate).
template <int BM>
FS_DEVICE FS_INLINE void store_shared(const float (&acc)[BM / 16][4], float* s, int64_t lds, int64_t n0, bool accumulate) {
  constexpr int TM = BM / 16;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float* d = s + (ty * TM + i) * lds + n0 + tx * 4 + j;
      *d = accumulate ? *d + acc[i][j] : acc[i][j];
    }
}

// The patch through the epilogue into global memory (rows m0.., columns n0..; bounds checked).
template <int BM, typename T>
FS_DEVICE FS_INLINE void store_epilogue(const float (&acc)[BM / 16][4], const EpilogueArgs& e, int64_t m0, int64_t M,
                                        int64_t n0, int64_t N) {
  constexpr int TM = BM / 16;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty * TM + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n >= N) continue;
      const float z = acc[i][j] + (e.bias ? to_float(static_cast<const T*>(e.bias)[n]) : 0.0f);
      const float g = e.mode == EpilogueMode::activation_grad ? to_float(static_cast<const T*>(e.grad)[m * e.ldg + n]) : 0.0f;
      const float v = epilogue(e.mode, e.act, z, g);
      if (e.out_f32) {
        static_cast<float*>(e.out)[m * e.ldo + n] = v;
      } else {
        static_cast<T*>(e.out)[m * e.ldo + n] = from_float<T>(v);
      }
    }
  }
}

// ---- lowrank_linear: T = x A into shared memory, then y = epilogue(T B) over N tiles ----------------
template <int BM>
FS_HOST_DEVICE FS_INLINE int64_t linear_smem_bytes(int64_t r) {
  return (int64_t(BM) * smem_ld(r) + Stage<BM>::floats()) * int64_t(sizeof(float));
}

template <int BM, typename T>
__global__ void __launch_bounds__(kThreads) linear_kernel(const LinearProblem p, const EpilogueArgs e) {
  extern __shared__ __align__(16) float smem[];
  const int64_t ldt = smem_ld(p.r);
  float* ts = smem;
  const Stage<BM> st{ts + BM * ldt, ts + BM * ldt + BM * (kBK + 1)};
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  float acc[BM / 16][4];
  for (int64_t n0 = 0; n0 < p.r; n0 += kBN) {
    tile_product<BM, T, T>(acc, nullptr, 0, p.x, m0, p.M, p.a, 0, n0, p.r, p.K, st);
    store_shared<BM>(acc, ts, ldt, n0, false);
  }
  for (int64_t n0 = 0; n0 < p.N; n0 += kBN) {
    tile_product<BM, float, T>(acc, ts, ldt, Strided{}, 0, 0, p.b, 0, n0, p.N, p.r, st);
    store_epilogue<BM, T>(acc, e, m0, p.M, n0, p.N);
  }
}

// ---- generic product (the backward's GEMMs): out = epilogue(left @ right), one tile per CTA ---------
template <int BM, typename TL, typename TR, typename T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const Strided left, int64_t M, int64_t K, const Strided right,
                                                        int64_t N, const EpilogueArgs e) {
  __shared__ __align__(16) float xs[BM * (kBK + 1)];
  __shared__ __align__(16) float ws[kBK * kBN];
  const Stage<BM> st{xs, ws};
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * kBN;
  float acc[BM / 16][4];
  tile_product<BM, TL, TR>(acc, nullptr, 0, left, m0, M, right, 0, n0, N, K, st);
  store_epilogue<BM, T>(acc, e, m0, M, n0, N);
}

// ---- lowrank_ffn / lowrank_gated_ffn: P = x A1 (and x Au) in shared memory; per 64-column tile of
// ---- d_ff the hidden H in shared memory, S += H A2[tile] in shared memory; y = S B2 + b2 -------------
template <int BM>
FS_HOST_DEVICE FS_INLINE int64_t ffn_smem_bytes(const FfnProblem& p) {
  const int64_t floats = int64_t(BM) * (smem_ld(p.r1) + smem_ld(p.r2) + (p.gated ? smem_ld(p.r1u) : 0) + kBN + kPad) +
                         Stage<BM>::floats();
  return floats * int64_t(sizeof(float));
}

template <int BM, typename T>
__global__ void __launch_bounds__(kThreads) ffn_kernel(const FfnProblem p, T* __restrict__ y) {
  extern __shared__ __align__(16) float smem[];
  constexpr int TM = BM / 16;
  const int64_t ld1 = smem_ld(p.r1), ld2 = smem_ld(p.r2), ldu = p.gated ? smem_ld(p.r1u) : 0, ldh = kBN + kPad;
  float* ps = smem;
  float* ss = ps + BM * ld1;
  float* us = ss + BM * ld2;
  float* hs = us + BM * ldu;
  const Stage<BM> st{hs + BM * ldh, hs + BM * ldh + BM * (kBK + 1)};
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[TM][4], up[TM][4];
  for (int64_t n0 = 0; n0 < p.r1; n0 += kBN) {
    tile_product<BM, T, T>(acc, nullptr, 0, p.x, m0, p.M, p.a1, 0, n0, p.r1, p.K, st);
    store_shared<BM>(acc, ps, ld1, n0, false);
  }
  if (p.gated) {
    for (int64_t n0 = 0; n0 < p.r1u; n0 += kBN) {
      tile_product<BM, T, T>(acc, nullptr, 0, p.x, m0, p.M, p.au, 0, n0, p.r1u, p.K, st);
      store_shared<BM>(acc, us, ldu, n0, false);
    }
  }
  if (p.d_ff == 0) {  // no hidden units: S = 0
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int64_t n0 = 0; n0 < p.r2; n0 += kBN) store_shared<BM>(acc, ss, ld2, n0, false);
  }
  for (int64_t d0 = 0; d0 < p.d_ff; d0 += kBN) {
    tile_product<BM, float, T>(acc, ps, ld1, Strided{}, 0, 0, p.b1, 0, d0, p.d_ff, p.r1, st);
    if (p.gated) tile_product<BM, float, T>(up, us, ldu, Strided{}, 0, 0, p.bu, 0, d0, p.d_ff, p.r1u, st);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t d = d0 + tx * 4 + j;
        float h = 0.0f;
        if (d < p.d_ff) {
          h = p.gated ? activate(p.act, acc[i][j]) * up[i][j]
                      : activate(p.act, acc[i][j] + (p.bias1 ? to_float(static_cast<const T*>(p.bias1)[d]) : 0.0f));
        }
        acc[i][j] = h;
      }
    __syncthreads();  // the previous tile's readers of hs are done
    store_shared<BM>(acc, hs, ldh, 0, false);
    __syncthreads();
    const int64_t dc = p.d_ff - d0 < kBN ? p.d_ff - d0 : kBN;
    for (int64_t n0 = 0; n0 < p.r2; n0 += kBN) {
      tile_product<BM, float, T>(acc, hs, ldh, Strided{}, 0, 0, p.a2, d0, n0, p.r2, dc, st);
      store_shared<BM>(acc, ss, ld2, n0, d0 > 0);  // each thread adds into its own patch
    }
  }
  __syncthreads();
  EpilogueArgs e;
  e.out = y;
  e.ldo = p.N;
  e.bias = p.gated ? nullptr : p.bias2;
  for (int64_t n0 = 0; n0 < p.N; n0 += kBN) {
    tile_product<BM, float, T>(acc, ss, ld2, Strided{}, 0, 0, p.b2, 0, n0, p.N, p.r2, st);
    store_epilogue<BM, T>(acc, e, m0, p.M, n0, p.N);
  }
}

// ---- launchers ----------------------------------------------------------------------------------
inline int max_smem_optin() {
  int device = 0, bytes = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

template <typename Kernel, typename... Args>
cudaError_t launch_with_smem(Kernel kernel, dim3 grid, int64_t bytes, cudaStream_t stream, Args... args) {
  if (bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, kThreads, size_t(bytes), stream>>>(args...);
  return cudaGetLastError();
}

// 32 rows per CTA when the rank-space buffers fit in this GPU's shared memory, else 16.
template <typename T>
cudaError_t launch_linear(const LinearProblem& p, const EpilogueArgs& e, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (linear_smem_bytes<32>(p.r) <= max_smem_optin()) {
    return launch_with_smem(linear_kernel<32, T>, dim3(unsigned(ceil_div(p.M, 32))), linear_smem_bytes<32>(p.r),
                            stream, p, e);
  }
  return launch_with_smem(linear_kernel<16, T>, dim3(unsigned(ceil_div(p.M, 16))), linear_smem_bytes<16>(p.r),
                          stream, p, e);
}

template <typename T>
cudaError_t launch_ffn(const FfnProblem& p, T* y, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (ffn_smem_bytes<32>(p) <= max_smem_optin()) {
    return launch_with_smem(ffn_kernel<32, T>, dim3(unsigned(ceil_div(p.M, 32))), ffn_smem_bytes<32>(p), stream, p, y);
  }
  return launch_with_smem(ffn_kernel<16, T>, dim3(unsigned(ceil_div(p.M, 16))), ffn_smem_bytes<16>(p), stream, p, y);
}

template <typename T>
cudaError_t launch_gemm(bool left_f32, const Strided& left, int64_t M, int64_t K, bool right_f32, const Strided& right,
                        int64_t N, const EpilogueArgs& e, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const dim3 grid(unsigned(ceil_div(M, 32)), unsigned(ceil_div(N, kBN)));
  if (left_f32 && right_f32) {
    gemm_kernel<32, float, float, T><<<grid, kThreads, 0, stream>>>(left, M, K, right, N, e);
  } else if (left_f32) {
    gemm_kernel<32, float, T, T><<<grid, kThreads, 0, stream>>>(left, M, K, right, N, e);
  } else if (right_f32) {
    gemm_kernel<32, T, float, T><<<grid, kThreads, 0, stream>>>(left, M, K, right, N, e);
  } else {
    gemm_kernel<32, T, T, T><<<grid, kThreads, 0, stream>>>(left, M, K, right, N, e);
  }
  return cudaGetLastError();
}

}  // namespace flashstream::lowrank::cuda
