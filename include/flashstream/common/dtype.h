// Storage types for 16-bit floats and their exact conversions to and from float, identical on
// host and device. Kernels compute in float and convert at load/store; float -> 16-bit rounds to
// nearest even, as torch's .to() does.
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/common/macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace flashstream {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// Raw 16-bit payloads; layout-compatible with at::BFloat16 / at::Half / __nv_bfloat16 / __half.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

FS_HOST_DEVICE FS_INLINE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

FS_HOST_DEVICE FS_INLINE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

FS_HOST_DEVICE FS_INLINE float to_float(float x) { return x; }
FS_HOST_DEVICE FS_INLINE float to_float(bf16_t x) { return bits_float(uint32_t(x.bits) << 16); }

FS_HOST_DEVICE FS_INLINE float to_float(f16_t x) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(x.bits));
#else
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1Fu;
  const uint32_t mant = x.bits & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24 is exact in float
    return bits_float(sign | float_bits(float(mant) * 5.9604644775390625e-8f));
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

template <typename T>
FS_HOST_DEVICE FS_INLINE T from_float(float x);

template <>
FS_HOST_DEVICE FS_INLINE float from_float<float>(float x) { return x; }

template <>
FS_HOST_DEVICE FS_INLINE bf16_t from_float<bf16_t>(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  return bf16_t{uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

template <>
FS_HOST_DEVICE FS_INLINE f16_t from_float<f16_t>(float x) {
#if defined(__CUDA_ARCH__)
  return f16_t{__half_as_ushort(__float2half_rn(x))};
#else
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  uint32_t h;
  if (a > 0x7F800000u) {
    h = 0x7E00u;  // NaN
  } else if (a >= 0x477FF000u) {
    h = 0x7C00u;  // >= 65520 rounds to infinity
  } else if (a >= 0x38800000u) {  // normal half: rebias the exponent, round the mantissa to even
    h = (a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  } else {  // subnormal half: the float adder rounds |x| to a multiple of 2^-24 for us
    h = float_bits(bits_float(a) + 0.5f) - 0x3F000000u;
  }
  return f16_t{uint16_t(sign | h)};
#endif
}

}  // namespace flashstream
