// FSQ CPU kernels: vectorised over the flat element stream of z ([n, d] row-major). Lane k of a
// SIMD vector holds element e, whose dimension is e % d, so the per-dimension constants repeat
// with period lcm(d, lanes); they are laid out once per call in LaneTables. Work is done in tiles
// of whole vectors; a ragged last tile runs through a zero-padded copy so that every element takes
// the same vector math (one answer per input, wherever it sits). Torch-free; host only.
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/common/simd.h"
#include "flashstream/fsq/params.h"

namespace flashstream::fsq::cpu {
inline namespace FLASHSTREAM_ISA {  // see simd.h: per-ISA symbols

template <typename T>
FS_INLINE void copy_n(const T* src, int64_t n, T* dst) { std::memcpy(dst, src, n * sizeof(T)); }
template <typename T>
FS_INLINE void zero_n(T* dst, int64_t n) { std::memset(static_cast<void*>(dst), 0, n * sizeof(T)); }
FS_INLINE int gcd(int a, int b) { while (b) { const int r = a % b; a = b; b = r; } return a; }

inline constexpr int kTargetTileElems = 2048;
inline constexpr int kMaxPeriod = kMaxDims * 16;  // lcm(d, lanes) <= d * lanes, lanes <= 16
inline constexpr int kMaxTileElems = kTargetTileElems + kMaxPeriod;

struct LaneTables {
  int period = 0;      // lcm(d, lanes), in elements
  int tile_elems = 0;  // a multiple of the period
  int tile_vectors = 0;
  alignas(64) float half_l[kMaxPeriod];
  alignas(64) float offset[kMaxPeriod];
  alignas(64) float shift[kMaxPeriod];
  alignas(64) float half_width[kMaxPeriod];
  alignas(64) float inv_half_width[kMaxPeriod];
};

inline void make_lane_tables(const Params& p, LaneTables* t) {
  const int d = p.dims;
  t->period = d / gcd(d, simd::kLanes) * simd::kLanes;
  const int tiles_of_period = kTargetTileElems / t->period;
  t->tile_elems = (tiles_of_period > 0 ? tiles_of_period : 1) * t->period;
  t->tile_vectors = t->tile_elems / d;
  for (int e = 0; e < t->period; ++e) {
    const int j = e % d;
    t->half_l[e] = p.half_l[j];
    t->offset[e] = p.offset[j];
    t->shift[e] = p.shift[j];
    t->half_width[e] = p.half_width[j];
    t->inv_half_width[e] = p.inv_half_width[j];
  }
}

// Runs fn(first_vector, vectors_in_tile, in_elems, elems) over [v_begin, v_end) in tiles;
// `in_elems` is a full tile's worth of readable input (padded with zeros for a ragged tile).
template <typename T, typename TileFn, typename FinishFn>
inline void for_each_tile(const LaneTables& t, int d, const T* in, int64_t v_begin, int64_t v_end,
                          T* pad, TileFn&& fn, FinishFn&& finish_ragged) {
  for (int64_t v0 = v_begin; v0 < v_end; v0 += t.tile_vectors) {
    const int64_t nv = (v_end - v0 < t.tile_vectors) ? v_end - v0 : t.tile_vectors;
    if (nv == t.tile_vectors) {
      fn(v0, nv, in + v0 * d, false);
    } else {
      zero_n(pad, t.tile_elems);
      copy_n(in + v0 * d, nv * d, pad);
      fn(v0, nv, static_cast<const T*>(pad), true);
      finish_ragged(v0, nv);
    }
  }
}

// q / (L // 2), correctly rounded: the FMA-refined reciprocal where make_params proved it exact
// for these levels (see params.h), else a true division.
FS_INLINE simd::vf divide_codes(simd::vf q, simd::vf hw, simd::vf inv_hw, bool reciprocal_exact) {
  if (simd::kHasFma && reciprocal_exact) {
    const simd::vf r = q * inv_hw;
    return simd::fma(simd::fma(-r, hw, q), inv_hw, r);
  }
  return q / hw;
}

// index = sum_j digit_j * basis_j per vector; digit -1 marks a NaN. kDims > 0 unrolls common widths.
template <int kDims>
FS_INLINE bool combine_digits(const int32_t* __restrict digits, const int64_t* __restrict basis, int d,
                              int64_t* __restrict indices, int64_t nv) {
  const int dims = kDims > 0 ? kDims : d;
  bool any_nan = false;
  for (int64_t v = 0; v < nv; ++v) {
    const int32_t* dv = digits + v * dims;
    int64_t index = 0;
    int32_t lowest = 0;
    for (int j = 0; j < dims; ++j) {
      lowest = dv[j] < lowest ? dv[j] : lowest;
      index += int64_t(dv[j]) * basis[j];
    }
    indices[v] = lowest < 0 ? -1 : index;
    any_nan |= lowest < 0;
  }
  return any_nan;
}

// codes/indices for vectors [v_begin, v_end). Returns true if some vector held a NaN (its index
// is then -1 and its codes NaN).
template <typename T>
bool forward(const Params& p, const LaneTables& t, const T* z, T* codes, int64_t* indices,
             int64_t v_begin, int64_t v_end) {
  const int d = p.dims;
  const bool reciprocal_exact = p.reciprocal_division_exact;
  alignas(64) T pad_in[kMaxTileElems];
  alignas(64) T pad_codes[kMaxTileElems];
  alignas(64) int32_t digits[kMaxTileElems];
  alignas(64) int64_t basis[kMaxDims];
  for (int j = 0; j < d; ++j) basis[j] = p.basis[j];
  bool any_nan = false;
  auto tile = [&](int64_t v0, int64_t nv, const T* zin, bool ragged) {
    T* cout = ragged ? pad_codes : codes + v0 * d;
    for (int k = 0, c = 0; k < t.tile_elems; k += simd::kLanes, c += simd::kLanes) {
      if (c == t.period) c = 0;  // lane constants repeat every `period` elements
      const simd::vf x = simd::load(zin + k);
      const simd::vf hw = simd::load(t.half_width + c);
      const simd::vf b = simd::tanh(x + simd::load(t.shift + c)) * simd::load(t.half_l + c) - simd::load(t.offset + c);
      const simd::vf q = simd::round_even(b);
      simd::store(cout + k, divide_codes(q, hw, simd::load(t.inv_half_width + c), reciprocal_exact));
      const simd::vi digit = __builtin_convertvector(q + hw, simd::vi);
      const simd::vi dig = q == q ? digit : simd::vi{} - 1;  // NaN -> -1
      std::memcpy(digits + k, &dig, sizeof dig);
    }
    int64_t* out = indices + v0;
    bool nan;
    switch (d) {  // unrolled for the common widths
      case 3: nan = combine_digits<3>(digits, basis, d, out, nv); break;
      case 4: nan = combine_digits<4>(digits, basis, d, out, nv); break;
      case 5: nan = combine_digits<5>(digits, basis, d, out, nv); break;
      case 6: nan = combine_digits<6>(digits, basis, d, out, nv); break;
      case 8: nan = combine_digits<8>(digits, basis, d, out, nv); break;
      default: nan = combine_digits<0>(digits, basis, d, out, nv); break;
    }
    any_nan |= nan;
  };
  auto finish = [&](int64_t v0, int64_t nv) { copy_n(pad_codes, nv * d, codes + v0 * d); };
  T* pad = pad_in;
  for_each_tile(t, d, z, v_begin, v_end, pad, tile, finish);
  return any_nan;
}

// grad_z = grad_codes * (1 - tanh(z + shift)^2) * half_l / (L // 2), for vectors [v_begin, v_end).
template <typename T>
void backward(const Params& p, const LaneTables& t, const T* grad_codes, const T* z, T* grad_z,
              int64_t v_begin, int64_t v_end) {
  const int d = p.dims;
  alignas(64) T pad_z[kMaxTileElems];
  alignas(64) T pad_g[kMaxTileElems];
  alignas(64) T pad_out[kMaxTileElems];
  auto tile = [&](int64_t v0, int64_t nv, const T* zin, bool ragged) {
    const T* gin = grad_codes + v0 * d;
    if (ragged) {
      zero_n(pad_g, t.tile_elems);
      copy_n(gin, nv * d, pad_g);
      gin = pad_g;
    }
    T* out = ragged ? pad_out : grad_z + v0 * d;
    for (int k = 0, c = 0; k < t.tile_elems; k += simd::kLanes, c += simd::kLanes) {
      if (c == t.period) c = 0;
      const simd::vf th = simd::tanh(simd::load(zin + k) + simd::load(t.shift + c));
      const simd::vf scale = simd::load(t.half_l + c) * simd::load(t.inv_half_width + c);
      simd::store(out + k, simd::load(gin + k) * ((1.0f - th * th) * scale));
    }
  };
  auto finish = [&](int64_t v0, int64_t nv) { copy_n(pad_out, nv * d, grad_z + v0 * d); };
  for_each_tile(t, d, z, v_begin, v_end, static_cast<T*>(pad_z), tile, finish);
}

// codes [n, d] from indices [n]. Returns the number of out-of-range indices (their codes are NaN).
template <typename T>
int64_t indices_to_codes(const Params& p, const int64_t* indices, T* codes, int64_t begin, int64_t end) {
  const int d = p.dims;
  int64_t bad = 0;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t index = indices[i];
    T* out = codes + i * d;
    if (index < 0 || index >= p.codebook_size) {
      ++bad;
      for (int j = 0; j < d; ++j) out[j] = from_float<T>(__builtin_nanf(""));
      continue;
    }
    decode_index(p, index, [&](int j, float code) { out[j] = from_float<T>(code); });
  }
  return bad;
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::fsq::cpu
