// FSQ CUDA kernels: one thread per vector, its d elements moved with the widest aligned vector
// accesses (d known at compile time for d <= 8, the common case; a runtime-d kernel covers the
// rest and unaligned views). The math is params.h's, shared with the CPU path.
#pragma once
#include <cstdint>
#include <type_traits>

#include "flashstream/common/cuda_utils.cuh"
#include "flashstream/common/dtype.h"
#include "flashstream/fsq/params.h"

namespace flashstream::fsq::cuda {

inline constexpr int kThreads = 256;
inline constexpr int kMaxStaticDims = 8;

// Row v of z -> codes row v and indices[v]. kDims == 0: runtime dims, scalar accesses.
// nan_flag (may be null) is raised when a row holds a NaN; that row gets index -1 and NaN codes.
template <typename T, int kDims>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const Params p, const T* __restrict__ z, T* __restrict__ codes,
               int64_t* __restrict__ indices, int64_t n, int* __restrict__ nan_flag) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += stride) {
    int64_t index = 0;
    bool nan = false;
    if constexpr (kDims > 0) {
      T in[kDims], out[kDims];
      flashstream::cuda::load_row(z + v * kDims, in);
#pragma unroll
      for (int j = 0; j < kDims; ++j) {
        const float q = rintf(bounded(p, j, to_float(in[j])));
        out[j] = from_float<T>(code_of(p, j, q));
        nan |= q != q;
        index += int64_t(q + p.half_width[j]) * p.basis[j];
      }
      flashstream::cuda::store_row(codes + v * kDims, out);
    } else {
      const int d = p.dims;
      for (int j = 0; j < d; ++j) {
        const float q = rintf(bounded(p, j, to_float(z[v * d + j])));
        codes[v * d + j] = from_float<T>(code_of(p, j, q));
        nan |= q != q;
        index += int64_t(q + p.half_width[j]) * p.basis[j];
      }
    }
    indices[v] = nan ? -1 : index;
    if (nan && nan_flag != nullptr) atomicOr(nan_flag, 1);
  }
}

template <typename T, int kDims>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const Params p, const T* __restrict__ grad_codes, const T* __restrict__ z,
                T* __restrict__ grad_z, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += stride) {
    if constexpr (kDims > 0) {
      T g[kDims], in[kDims], out[kDims];
      flashstream::cuda::load_row(grad_codes + v * kDims, g);
      flashstream::cuda::load_row(z + v * kDims, in);
#pragma unroll
      for (int j = 0; j < kDims; ++j) out[j] = from_float<T>(to_float(g[j]) * code_grad(p, j, to_float(in[j])));
      flashstream::cuda::store_row(grad_z + v * kDims, out);
    } else {
      const int d = p.dims;
      for (int j = 0; j < d; ++j) {
        const int64_t e = v * d + j;
        grad_z[e] = from_float<T>(to_float(grad_codes[e]) * code_grad(p, j, to_float(z[e])));
      }
    }
  }
}

template <typename T, int kDims>
__global__ void __launch_bounds__(kThreads)
indices_to_codes_kernel(const Params p, const int64_t* __restrict__ indices, T* __restrict__ codes,
                        int64_t n, int* __restrict__ bad_flag) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += stride) {
    const int64_t index = indices[v];
    const bool bad = index < 0 || index >= p.codebook_size;
    if (bad && bad_flag != nullptr) atomicOr(bad_flag, 1);
    if constexpr (kDims > 0) {
      T out[kDims];
      if (bad) {
#pragma unroll
        for (int j = 0; j < kDims; ++j) out[j] = from_float<T>(__int_as_float(0x7FC00000));
      } else {
        decode_index(p, index, [&](int j, float code) { out[j] = from_float<T>(code); });
      }
      flashstream::cuda::store_row(codes + v * kDims, out);
    } else {
      T* row = codes + v * p.dims;
      if (bad) {
        for (int j = 0; j < p.dims; ++j) row[j] = from_float<T>(__int_as_float(0x7FC00000));
      } else {
        decode_index(p, index, [&](int j, float code) { row[j] = from_float<T>(code); });
      }
    }
  }
}

// ---- launchers: pick the compile-time row width when the pointers allow it ---------------------
template <typename Fn>
inline cudaError_t dispatch_dims(int dims, bool aligned, Fn&& fn) {
  if (aligned) {
    switch (dims) {
      case 1: return fn(std::integral_constant<int, 1>{});
      case 2: return fn(std::integral_constant<int, 2>{});
      case 3: return fn(std::integral_constant<int, 3>{});
      case 4: return fn(std::integral_constant<int, 4>{});
      case 5: return fn(std::integral_constant<int, 5>{});
      case 6: return fn(std::integral_constant<int, 6>{});
      case 7: return fn(std::integral_constant<int, 7>{});
      case 8: return fn(std::integral_constant<int, 8>{});
      default: break;
    }
  }
  return fn(std::integral_constant<int, 0>{});
}

template <typename T>
cudaError_t launch_forward(const Params& p, const T* z, T* codes, int64_t* indices, int64_t n,
                           int* nan_flag, cudaStream_t stream) {
  const bool aligned = flashstream::cuda::aligned16(z) && flashstream::cuda::aligned16(codes);
  return dispatch_dims(p.dims, aligned, [&](auto dims) {
    forward_kernel<T, decltype(dims)::value>
        <<<flashstream::cuda::grid_for(n, kThreads), kThreads, 0, stream>>>(p, z, codes, indices, n, nan_flag);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t launch_backward(const Params& p, const T* grad_codes, const T* z, T* grad_z, int64_t n,
                            cudaStream_t stream) {
  const bool aligned = flashstream::cuda::aligned16(grad_codes) && flashstream::cuda::aligned16(z) &&
                       flashstream::cuda::aligned16(grad_z);
  return dispatch_dims(p.dims, aligned, [&](auto dims) {
    backward_kernel<T, decltype(dims)::value>
        <<<flashstream::cuda::grid_for(n, kThreads), kThreads, 0, stream>>>(p, grad_codes, z, grad_z, n);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t launch_indices_to_codes(const Params& p, const int64_t* indices, T* codes, int64_t n,
                                    int* bad_flag, cudaStream_t stream) {
  return dispatch_dims(p.dims, flashstream::cuda::aligned16(codes), [&](auto dims) {
    indices_to_codes_kernel<T, decltype(dims)::value>
        <<<flashstream::cuda::grid_for(n, kThreads), kThreads, 0, stream>>>(p, indices, codes, n, bad_flag);
    return cudaGetLastError();
  });
}

}  // namespace flashstream::fsq::cuda
