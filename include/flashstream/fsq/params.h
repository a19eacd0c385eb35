// FSQ (Mentzer et al. 2023, appendix A.1): the per-dimension constants and the scalar math that
// the CPU and CUDA kernels share. Torch-free; host and device.
//
//   half_l = (L-1)(1-eps)/2     offset = 0.5 if L even else 0     shift = tan(offset / half_l)
//   q      = round_half_even(tanh(z + shift) * half_l - offset)   (an integer in [-L//2, (L-1)//2])
//   code   = q / (L // 2)
//   index  = sum_j (q_j + L_j // 2) * basis_j,   basis = cumprod([1] + levels[:-1])
#pragma once
#include <cmath>
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::fsq {

inline constexpr int kMaxDims = 32;
// Codes are computed in fp32, which holds every integer q exactly only while |q| < 2^23.
inline constexpr int64_t kMaxLevel = int64_t(1) << 24;

struct Params {
  int dims = 0;
  int64_t codebook_size = 1;  // prod(levels) <= 2^63 - 1
  float half_l[kMaxDims];
  float offset[kMaxDims];
  float shift[kMaxDims];
  float half_width[kMaxDims];  // L // 2, as the divisor of codes
  float inv_half_width[kMaxDims];
  // q / (L//2) equals the FMA-refined reciprocal product (divide_code) for every q of every
  // dimension: checked exhaustively in make_params, so kernels may skip the slow division.
  bool reciprocal_division_exact = false;
  int32_t levels[kMaxDims];
  int32_t half_width_int[kMaxDims];
  int64_t basis[kMaxDims];
};

// codes = q / hw computed as r = q * (1/hw) refined by one FMA Newton step: correctly rounded for
// the small integer q of FSQ in every case tried, and make_params verifies it for the actual levels.
FS_HOST_DEVICE FS_INLINE float divide_code(float q, float hw, float inv_hw) {
#if defined(__CUDA_ARCH__)
  const float r = __fmul_rn(q, inv_hw);
  return __fmaf_rn(__fmaf_rn(-r, hw, q), inv_hw, r);
#else
  const float r = q * inv_hw;
  return std::fma(std::fma(-r, hw, q), inv_hw, r);
#endif
}

// Largest sum of levels for which the exhaustive check runs (per op call, so it must be cheap).
inline constexpr int64_t kMaxCheckedLevelSum = 4096;

inline bool reciprocal_division_is_exact(const Params& p) {
  int64_t total = 0;
  for (int j = 0; j < p.dims; ++j) total += p.levels[j];
  if (total > kMaxCheckedLevelSum) return false;
  for (int j = 0; j < p.dims; ++j) {
    for (int32_t q = -p.half_width_int[j]; q <= p.levels[j] - 1 - p.half_width_int[j]; ++q) {
      const float fq = float(q);
      if (divide_code(fq, p.half_width[j], p.inv_half_width[j]) != fq / p.half_width[j]) return false;
    }
  }
  return true;
}

enum class ParamsError { ok, no_dims, too_many_dims, level_too_small, level_too_large, codebook_overflow };

// Host-side: validates `levels` and fills `out`. On error, `*bad_dim` names the offending entry.
inline ParamsError make_params(const int64_t* levels, int dims, double eps, Params* out, int* bad_dim) {
  *bad_dim = -1;
  if (dims <= 0) return ParamsError::no_dims;
  if (dims > kMaxDims) return ParamsError::too_many_dims;
  out->dims = dims;
  int64_t basis = 1;
  for (int j = 0; j < dims; ++j) {
    const int64_t L = levels[j];
    *bad_dim = j;
    if (L < 2) return ParamsError::level_too_small;
    if (L > kMaxLevel) return ParamsError::level_too_large;
    const double half_l = double(L - 1) * (1.0 - eps) / 2.0;
    const double offset = (L % 2 == 0) ? 0.5 : 0.0;
    out->half_l[j] = float(half_l);
    out->offset[j] = float(offset);
    out->shift[j] = float(std::tan(offset / half_l));
    out->half_width[j] = float(L / 2);
    out->inv_half_width[j] = 1.0f / float(L / 2);
    out->levels[j] = int32_t(L);
    out->half_width_int[j] = int32_t(L / 2);
    out->basis[j] = basis;
    if (basis > INT64_MAX / L) return ParamsError::codebook_overflow;
    basis *= L;
  }
  *bad_dim = -1;
  out->codebook_size = basis;
  out->reciprocal_division_exact = reciprocal_division_is_exact(*out);
  return ParamsError::ok;
}

inline const char* params_error_message(ParamsError e) {
  switch (e) {
    case ParamsError::ok: return "ok";
    case ParamsError::no_dims: return "levels must not be empty";
    case ParamsError::too_many_dims: return "at most 32 levels (dimensions) are supported";
    case ParamsError::level_too_small: return "every level must be >= 2";
    case ParamsError::level_too_large: return "every level must be <= 2^24 (codes are computed in fp32)";
    case ParamsError::codebook_overflow: return "the product of levels must fit in int64 (< 2^63)";
  }
  return "unknown error";
}

// Code value q / (L // 2), correctly rounded, by the fastest exact route.
FS_HOST_DEVICE FS_INLINE float code_of(const Params& p, int j, float q) {
  return p.reciprocal_division_exact ? divide_code(q, p.half_width[j], p.inv_half_width[j]) : q / p.half_width[j];
}

// The pre-rounding value tanh(z + shift) * half_l - offset, in fp32.
FS_HOST_DEVICE FS_INLINE float bounded(const Params& p, int j, float z) {
  return tanhf(z + p.shift[j]) * p.half_l[j] - p.offset[j];
}

// d code / d z of the straight-through estimator: d(tanh(z + shift) * half_l)/dz / (L // 2).
FS_HOST_DEVICE FS_INLINE float code_grad(const Params& p, int j, float z) {
  const float t = tanhf(z + p.shift[j]);
  return (1.0f - t * t) * p.half_l[j] / p.half_width[j];
}

// The code values of a valid codebook index, (digit_j - L_j//2) / (L_j//2) with digit_j peeled off
// in order; 32-bit division (several times cheaper on GPUs) when the codebook fits in 32 bits.
template <typename Emit>
FS_HOST_DEVICE FS_INLINE void decode_index(const Params& p, int64_t index, Emit&& emit) {
  if (p.codebook_size <= int64_t(UINT32_MAX)) {
    uint32_t rest = uint32_t(index);
    for (int j = 0; j < p.dims; ++j) {
      const uint32_t L = uint32_t(p.levels[j]);
      const uint32_t digit = rest % L;
      rest /= L;
      emit(j, float(int32_t(digit) - p.half_width_int[j]) / p.half_width[j]);
    }
  } else {
    int64_t rest = index;
    for (int j = 0; j < p.dims; ++j) {
      const int64_t digit = rest % p.levels[j];
      rest /= p.levels[j];
      emit(j, float(digit - p.half_width_int[j]) / p.half_width[j]);
    }
  }
}

}  // namespace flashstream::fsq
