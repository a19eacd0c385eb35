// Depthwise causal conv1d CUDA kernels (params.h has the math), any x/y/state strides.
//  * decode_kernel: one thread owns a (b, c) row: it reads its history, computes the T outputs,
//    then shifts the state in place (reads run ahead of writes). One launch; used when T is small
//    or shorter than the state, where an in-place shift would race across threads.
//  * forward_kernel + save_state_kernel: for long chunks (T >= L), threads over (b, c, run of
//    kRun outputs), consecutive threads on consecutive channels for channel-last x, on consecutive
//    runs for time-major x; then the new state, which is then a pure copy of x's tail.
// Widths 2..4 have compile-time specialisations (weights in registers); other widths loop.
#pragma once
#include <cstdint>
#include <type_traits>

#include "flashstream/common/cuda_utils.cuh"
#include "flashstream/common/dtype.h"
#include "flashstream/conv/params.h"

namespace flashstream::conv::cuda {

inline constexpr int kThreads = 256;
inline constexpr int kRun = 4;             // outputs per thread in forward_kernel
inline constexpr int64_t kDecodeMaxT = 32; // longest chunk the one-kernel decode path takes

template <typename T>
FS_DEVICE FS_INLINE float tap(const CausalConv1dParams& p, const T* __restrict__ xrow, const T* srow, int64_t g) {
  if (g >= 0) return to_float(xrow[g * p.x_st]);
  return srow != nullptr ? to_float(srow[(p.state_len + g) * p.s_sl]) : 0.0f;
}

// Weights of channel c as floats: registers for a compile-time width, else read per use.
template <typename T, int kW>
struct Taps {
  float w[kW > 0 ? kW : 1];
  const T* wrow;
  FS_DEVICE FS_INLINE Taps(const T* __restrict__ weight, int64_t c, int W) : wrow(weight + c * W) {
    if constexpr (kW > 0) {
#pragma unroll
      for (int k = 0; k < kW; ++k) w[k] = to_float(wrow[k]);
    }
  }
  FS_DEVICE FS_INLINE float operator[](int k) const {
    if constexpr (kW > 0) return w[k];
    else return to_float(wrow[k]);
  }
};

template <typename T, int kW>
FS_DEVICE FS_INLINE float output_at(const CausalConv1dParams& p, const Taps<T, kW>& w, float bias,
                                    const T* __restrict__ xrow, const T* srow, int64_t t) {
  const int W = kW > 0 ? kW : p.width;
  float acc = bias;
#pragma unroll
  for (int k = 0; k < W; ++k) acc += w[k] * tap(p, xrow, srow, t + int64_t(k) * p.dilation - p.state_len);
  return p.silu ? silu(acc) : acc;
}

template <typename T, int kW>
__global__ void __launch_bounds__(kThreads)
decode_kernel(const CausalConv1dParams p, const T* __restrict__ x, const T* __restrict__ weight,
              const T* __restrict__ bias, T* state, const int32_t* __restrict__ indices, T* __restrict__ y) {
  const int64_t rows = p.batch * p.channels;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    const int64_t b = r / p.channels, c = r % p.channels;
    const Taps<T, kW> w(weight, c, p.width);
    const float bf = bias != nullptr ? to_float(bias[c]) : 0.0f;
    const int64_t slot = state_slot(p, state, indices, b);
    T* srow = slot >= 0 ? state + slot * p.s_sb + c * p.s_sc : nullptr;
    const T* xrow = x + b * p.x_sb + c * p.x_sc;
    T* yrow = y + b * p.y_sb + c * p.y_sc;
    for (int64_t t = 0; t < p.seqlen; ++t) yrow[t * p.y_st] = from_float<T>(output_at(p, w, bf, xrow, srow, t));
    if (srow == nullptr) continue;
    for (int64_t l = 0; l < p.state_len; ++l) {
      const int64_t e = p.seqlen + l;
      srow[l * p.s_sl] = e < p.state_len ? srow[e * p.s_sl] : xrow[(e - p.state_len) * p.x_st];
    }
  }
}

template <typename T, int kW>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const CausalConv1dParams p, const T* __restrict__ x, const T* __restrict__ weight,
               const T* __restrict__ bias, const T* __restrict__ state, const int32_t* __restrict__ indices,
               T* __restrict__ y, bool channels_fastest) {
  const int64_t runs = (p.seqlen + kRun - 1) / kRun;
  const int64_t n = p.batch * p.channels * runs;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t b, c, run;
    if (channels_fastest) {
      c = i % p.channels;
      run = (i / p.channels) % runs;
      b = i / (p.channels * runs);
    } else {
      run = i % runs;
      c = (i / runs) % p.channels;
      b = i / (runs * p.channels);
    }
    const Taps<T, kW> w(weight, c, p.width);
    const float bf = bias != nullptr ? to_float(bias[c]) : 0.0f;
    const int64_t slot = state_slot(p, state, indices, b);
    const T* srow = slot >= 0 ? state + slot * p.s_sb + c * p.s_sc : nullptr;
    const T* xrow = x + b * p.x_sb + c * p.x_sc;
    T* yrow = y + b * p.y_sb + c * p.y_sc;
    const int64_t t0 = run * kRun;
#pragma unroll
    for (int j = 0; j < kRun; ++j) {
      if (t0 + j < p.seqlen) yrow[(t0 + j) * p.y_st] = from_float<T>(output_at(p, w, bf, xrow, srow, t0 + j));
    }
  }
}

// After forward_kernel, for T >= L: state[slot, c, l] = x[b, c, T - L + l].
template <typename T>
__global__ void __launch_bounds__(kThreads)
save_state_kernel(const CausalConv1dParams p, const T* __restrict__ x, T* __restrict__ state,
                  const int32_t* __restrict__ indices) {
  const int64_t n = p.batch * p.channels * p.state_len;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t l = i % p.state_len, c = (i / p.state_len) % p.channels, b = i / (p.state_len * p.channels);
    const int64_t slot = state_slot(p, state, indices, b);
    if (slot < 0) continue;
    state[slot * p.s_sb + c * p.s_sc + l * p.s_sl] = x[b * p.x_sb + c * p.x_sc + (p.seqlen - p.state_len + l) * p.x_st];
  }
}

// One launch (decode_kernel) for short chunks and for chunks shorter than the state, whose
// in-place shift must stay within one thread; two (forward + save_state) otherwise.
inline bool use_decode_kernel(const CausalConv1dParams& p) {
  return p.seqlen <= kDecodeMaxT || p.seqlen < p.state_len;
}

template <typename Fn>
inline cudaError_t dispatch_width(int width, Fn&& fn) {
  switch (width) {
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    default: return fn(std::integral_constant<int, 0>{});
  }
}

#if defined(__CUDACC__)  // host compilers (tests/cuda_emu) see the kernels only, and run them serially
// y = conv(state ++ x), state updated; all on `stream`, no host sync.
template <typename T>
cudaError_t launch_causal_conv1d(const CausalConv1dParams& p, const T* x, const T* weight, const T* bias, T* state,
                                 const int32_t* indices, T* y, bool channel_last, cudaStream_t stream) {
  const int64_t rows = p.batch * p.channels;
  if (rows == 0 || p.seqlen == 0) return cudaSuccess;
  const bool one_kernel = use_decode_kernel(p);
  return dispatch_width(p.width, [&](auto width) {
    constexpr int kW = decltype(width)::value;
    if (one_kernel) {
      decode_kernel<T, kW><<<flashstream::cuda::grid_for(rows, kThreads), kThreads, 0, stream>>>(
          p, x, weight, bias, state, indices, y);
      return cudaGetLastError();
    }
    const int64_t n = rows * ((p.seqlen + kRun - 1) / kRun);
    forward_kernel<T, kW><<<flashstream::cuda::grid_for(n, kThreads), kThreads, 0, stream>>>(
        p, x, weight, bias, state, indices, y, channel_last);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || state == nullptr || p.state_len == 0) return err;
    save_state_kernel<T><<<flashstream::cuda::grid_for(rows * p.state_len, kThreads), kThreads, 0, stream>>>(
        p, x, state, indices);
    return cudaGetLastError();
  });
}
#endif  // __CUDACC__

}  // namespace flashstream::conv::cuda
