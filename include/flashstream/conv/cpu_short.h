// Depthwise causal conv1d on CPU, time-major rows of at most 16 outputs whose whole input
// (state ++ x, L <= 48 so L + T <= 64 values) fits in four AVX-512 registers: every tap is one two-source permute of two adjacent
// registers, and so is each 16 values of the new state, so nothing goes through the scratch
// window of cpu.h's path (which stores the inputs and reloads them shifted; 3-5x slower on such
// rows, measured at T = 16). The taps are summed in the window path's order (four partial sums,
// combined ((a0 + a1) + (a2 + a3)) + bias), so both paths give the same bits and any chunking still
// equals one offline call. Compiled into the AVX-512 build only; included by cpu.h.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#define FS_CONV_HAS_SHORT_PATH 1

namespace flashstream::conv::cpu {
inline namespace FLASHSTREAM_ISA {

inline constexpr int kShortLanes = 16;
inline constexpr int kShortRegs = 4;  // registers of one row's input
inline constexpr int kShortMaxState = 48;

// Rows of this call fit the register path: x and y rows unit-stride (time-major), T <= 16 (one
// vector of outputs), L <= 48, and a state (when there is one) unit-stride along its L inputs.
inline bool short_rows(const CausalConv1dParams& p, const void* state) {
  return p.seqlen >= 1 && p.seqlen <= kShortLanes && p.state_len <= kShortMaxState &&
         (state == nullptr || p.state_len == 0 || p.s_sl == 1);
}

// Lanes [0, n) of a row as raw 32-bit lanes (16-bit types zero-extended; zeros above n); masked
// lanes never touch memory. The state holds inputs: it is moved raw, never converted.
template <typename T>
FS_INLINE __m512i load_raw(const T* p, __mmask16 m) {
  if constexpr (sizeof(T) == 4) return _mm512_maskz_loadu_epi32(m, p);
  else return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
}
template <typename T>
FS_INLINE void store_raw(T* p, __m512i v, __mmask16 m) {
  if constexpr (sizeof(T) == 4) _mm512_mask_storeu_epi32(p, m, v);
  else _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(v));
}
template <typename T>
FS_INLINE __m512 to_floats(__m512i raw) {
  if constexpr (std::is_same_v<T, float>) return _mm512_castsi512_ps(raw);
  else if constexpr (std::is_same_v<T, bf16_t>) return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
  else return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));
}
// Lanes [0, n) of v to p, rounded as simd::store rounds (the window path's stores).
template <typename T>
FS_INLINE void store_lanes(T* p, __m512 v, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) _mm512_mask_storeu_ps(p, m, v);
  else if constexpr (std::is_same_v<T, bf16_t>) _mm512_mask_cvtepi32_storeu_epi16(p, m, __m512i(simd::bf16_bits(simd::vf(v))));
  else _mm512_mask_cvtepi32_storeu_epi16(p, m, __m512i(simd::f16_bits(simd::vf(v))));
}

FS_INLINE __mmask16 lanes_between(int64_t lo, int64_t hi) {  // lanes [lo, hi) of 16, clipped
  lo = lo < 0 ? 0 : lo;
  hi = hi > kShortLanes ? kShortLanes : hi;
  return lo < hi ? __mmask16(((1u << (hi - lo)) - 1u) << lo) : __mmask16(0);
}

// 16 consecutive lanes starting at lane `start` of the register sequence: registers start / 16
// and the next, and the permute index that picks them.
struct Window16 {
  int reg;
  __m512i idx;
};
inline Window16 window16(int start) {
  Window16 w{start / kShortLanes, _mm512_setzero_si512()};
  alignas(64) int32_t idx[kShortLanes];
  for (int t = 0; t < kShortLanes; ++t) idx[t] = start % kShortLanes + t;  // 16..31: the next register
  w.idx = _mm512_load_si512(idx);
  return w;
}

// Lanes [start, start + 16) of the register sequence r (reg = start / 16 and the next). The
// switch keeps every register index a constant, so r stays in registers (indexing an array of
// vectors by a run-time value puts it on the stack, and the reload waits on the store).
template <int R, typename V, typename Perm>
FS_INLINE V pick16(const V (&r)[R + 1], const Window16& w, Perm perm) {
  if constexpr (R == 1) {
    return perm(r[0], w.idx, r[1]);
  } else if constexpr (R == 2) {
    return w.reg == 0 ? perm(r[0], w.idx, r[1]) : perm(r[1], w.idx, r[2]);
  } else {
    switch (w.reg) {
      case 0: return perm(r[0], w.idx, r[1]);
      case 1: return perm(r[1], w.idx, r[2]);
      case 2: return perm(r[2], w.idx, r[3]);
      default: return perm(r[3], w.idx, r[4]);
    }
  }
}

// New state rows written kSaveDelay rows late. A masked load within a vector's 64 bytes of a
// masked store just before it (the next row's state starts L values after this row's) waits
// until the store has left the core: with the saves in line, a T = 16, W = 4 row took 9 ns, 5 ns
// without them (measured). Rows kSaveDelay apart are more than 64 bytes apart. Rows are distinct
// (state_indices are checked distinct), so the delay changes no result.
template <typename T, int NV>
struct DeferredSaves {
  static constexpr int kSaveDelay = 8;
  __mmask16 mask[NV];  // vector j of a row: lanes [16 j, 16 j + 16) of its state, masked to L
  alignas(64) int32_t vals[kSaveDelay][NV][kShortLanes];
  T* rows[kSaveDelay] = {};
  int next = 0;
  FS_INLINE void store(int i) {
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) store_raw(rows[i] + j * kShortLanes, _mm512_load_si512(vals[i][j]), mask[j]);
  }
  FS_INLINE void push(T* row, const __m512i (&v)[NV]) {
    if (rows[next] != nullptr) store(next);
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) _mm512_store_si512(vals[next][j], v[j]);
    rows[next] = row;
    next = next + 1 == kSaveDelay ? 0 : next + 1;
  }
  FS_INLINE void flush() {
    for (int i = 0; i < kSaveDelay; ++i) {
      const int j = (next + i) % kSaveDelay;
      if (rows[j] != nullptr) store(j);
      rows[j] = nullptr;
    }
  }
};

// f(integral_constant<int, O>) for O = 0..15, unrolled: a lane shift by O is an immediate operand.
template <int O = 0, typename F>
FS_INLINE void each_offset(F&& f) {
  if constexpr (O < kShortLanes) {
    f(std::integral_constant<int, O>{});
    each_offset<O + 1>(f);
  }
}

// Rows [r0, r1) of B*C. A row's input as registers in[0..4) holding the lanes of state ++ x: the
// state in lanes [0, L), x in [L, L + T); input g (relative to x) is lane L + g, so tap k of
// output t reads lane t + k * dilation and the new state is lanes [T, T + L). The next row's
// loads are issued before this row's stores, and the state stores are deferred (DeferredSaves):
// a state load waiting on the masked store of the state just below it costs more than the row.
template <typename T, int R>
void short_rows_run_r(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                    const int32_t* indices, T* y, int64_t r0, int64_t r1) {
  const int W = p.width, dil = p.dilation;
  const int L = int(p.state_len), Tn = int(p.seqlen);
  const int regs = (L + Tn + kShortLanes - 1) / kShortLanes, state_regs = (L + kShortLanes - 1) / kShortLanes;
  constexpr int SR = R < kShortMaxState / kShortLanes ? R : kShortMaxState / kShortLanes;  // state registers at most
  Window16 tap[kShortMaxState + 1], keep[SR];  // W <= L + 1 taps
  for (int k = 0; k < W; ++k) tap[k] = window16(k * dil);
  for (int j = 0; j < state_regs; ++j) keep[j] = window16(Tn + j * kShortLanes);
  __mmask16 state_mask[SR], x_mask[R];
  int64_t x_off[R];
  for (int j = 0; j < SR; ++j) state_mask[j] = lanes_between(0, L - j * kShortLanes);
  for (int q = 0; q < R; ++q) {  // x's values in register q: lanes [L - 16 q, L - 16 q + T)
    x_off[q] = int64_t(q) * kShortLanes - L;
    x_mask[q] = lanes_between(-x_off[q], Tn - x_off[q]);
  }
  const __mmask16 mx = lanes_between(0, Tn);
  auto perm_f = [](__m512 a, __m512i i, __m512 b) { return _mm512_permutex2var_ps(a, i, b); };
  auto perm_i = [](__m512i a, __m512i i, __m512i b) { return _mm512_permutex2var_epi32(a, i, b); };
  auto load_row = [&](int64_t b, int64_t c, T*& srow, __m512i (&in)[R + 1]) {
    const int64_t slot = state_slot(p, state, indices, b);
    srow = slot >= 0 ? state + slot * p.s_sb + c * p.s_sc : nullptr;
    const T* xrow = x + b * p.x_sb + c * p.x_sc;
#pragma GCC unroll 5
    for (int j = 0; j <= R; ++j) {
      in[j] = _mm512_setzero_si512();
      if (j < SR && j < state_regs && srow != nullptr)
        in[j] = load_raw(srow + j * kShortLanes, state_mask[j]);
      // x's piece of register j starts x_off[j] values from x's start (before it for the first
      // register, whose lower lanes are masked off and never read)
      if (j < R && x_mask[j] != 0)
        in[j] = _mm512_or_si512(in[j], load_raw(reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(xrow) +
                                                                           x_off[j] * int64_t(sizeof(T))),
                                                x_mask[j]));
    }
  };
  T* srow = nullptr;
  __m512i in[R + 1];
  alignas(64) float wconv[2][kShortMaxState + kShortLanes];  // 16-bit weights as floats, two rows
  int wpar = 0;
  auto convert_weights = [&](int64_t ch, float* out) {
    for (int j = 0; j < W; j += kShortLanes)
      _mm512_store_ps(out + j, to_floats<T>(load_raw(w + ch * W + j, lanes_between(0, W - j))));
  };
  if constexpr (!std::is_same_v<T, float>) {
    if (r0 < r1) convert_weights(r0 % p.channels, wconv[0]);
  }
  DeferredSaves<T, SR> saves;
  for (int j = 0; j < SR; ++j) saves.mask[j] = state_mask[j];  // 0 past the state's registers
  int64_t b = r0 / p.channels, c = r0 % p.channels;  // row r = b * C + c, advanced without divisions
  if (r0 < r1) load_row(b, c, srow, in);
  for (int64_t r = r0; r < r1; ++r) {
    __m512 f[R + 1];
#pragma GCC unroll 5
    for (int j = 0; j <= R; ++j) f[j] = j < regs ? to_floats<T>(in[j]) : _mm512_setzero_ps();
    auto tap_in = [&](int k) { return simd::vf(pick16<R>(f, tap[k], perm_f)); };
    simd::vf a[4] = {simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f)};
    // the row's weights as floats: fp32 read in place; 16-bit ones converted 16 at a time (a
    // scalar fp16 conversion per tap costs more than the tap), one row ahead: the taps broadcast
    // single floats out of these vector stores, and a load that soon after its store waits for it
    const float* wr;
    if constexpr (std::is_same_v<T, float>) {
      wr = w + c * W;
    } else {
      wr = wconv[wpar];
      wpar ^= 1;
      if (r + 1 < r1) convert_weights(c + 1 == p.channels ? 0 : c + 1, wconv[wpar]);
    }
    if (dil == 1) {
      // Taps [16 q, 16 q + 16) read registers q and q + 1 shifted by k - 16 q lanes: q constant
      // per segment and the shift an immediate (valignd), so no tap picks registers or loads a
      // permute index at run time. Tap k still adds into partial sum k % 4, in the order below.
#pragma GCC unroll 4
      for (int q = 0; q < R; ++q) {
        const int kb = q * kShortLanes, ke = W < kb + kShortLanes ? W : kb + kShortLanes;
        if (kb >= ke) break;
        const __m512i lo = _mm512_castps_si512(f[q]), hi = _mm512_castps_si512(f[q + 1]);
        each_offset([&](auto o) {
          constexpr int O = decltype(o)::value;
          if (kb + O < ke) a[O % 4] += bcast(wr[kb + O]) * simd::vf(_mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, O)));
        });
      }
    } else {
      int k = 0;
      for (; k + 4 <= W; k += 4) {
        a[0] += bcast(wr[k]) * tap_in(k);
        a[1] += bcast(wr[k + 1]) * tap_in(k + 1);
        a[2] += bcast(wr[k + 2]) * tap_in(k + 2);
        a[3] += bcast(wr[k + 3]) * tap_in(k + 3);
      }
      if (k < W) a[0] += bcast(wr[k]) * tap_in(k);
      if (k + 1 < W) a[1] += bcast(wr[k + 1]) * tap_in(k + 1);
      if (k + 2 < W) a[2] += bcast(wr[k + 2]) * tap_in(k + 2);
    }
    simd::vf acc = bcast(bias != nullptr ? to_float(bias[c]) : 0.0f) + ((a[0] + a[1]) + (a[2] + a[3]));
    if (p.silu) acc = silu(acc);
    __m512i new_state[SR];
#pragma GCC unroll 3
    for (int j = 0; j < SR; ++j)
      new_state[j] = j < state_regs ? pick16<R>(in, keep[j], perm_i) : _mm512_setzero_si512();
    T* const cur_srow = srow;
    T* const yrow = y + b * p.y_sb + c * p.y_sc;
    if (++c == p.channels) c = 0, ++b;
    if (r + 1 < r1) load_row(b, c, srow, in);  // before this row's stores (see above)
    store_lanes(yrow, __m512(acc), mx);
    saves.push(cur_srow, new_state);
  }
  saves.flush();
}

// The common narrow case (W = 2..4, dilation 1, so L = W - 1 <= 3) with everything that the
// general loop decides per row made constant: the state in its own register S (lanes [0, L)), x
// in X (lanes [0, T)), and tap k of output t reading window input t + k, which is S lane t + k
// below L and X lane t + k - L above: one permute of (S, X) per tap with an index fixed for the
// call (the last tap is X itself), one more for the new state. Same sums in the same order as
// short_rows_run_r, so the same bits.
template <typename T, int W>
void narrow_rows_run(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                     const int32_t* indices, T* y, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;  // the first row's loads below would read past the batch
  constexpr int L = W - 1;
  const int Tn = int(p.seqlen);
  __m512i tap_idx[W], keep_idx;
  for (int k = 0; k < W; ++k) {
    alignas(64) int32_t idx[kShortLanes];
    for (int t = 0; t < kShortLanes; ++t) idx[t] = t + k < L ? t + k : kShortLanes + t + k - L;
    tap_idx[k] = _mm512_load_si512(idx);
  }
  {
    alignas(64) int32_t idx[kShortLanes];
    for (int t = 0; t < kShortLanes; ++t) idx[t] = Tn + t < L ? Tn + t : kShortLanes + Tn + t - L;
    keep_idx = _mm512_load_si512(idx);
  }
  const __mmask16 mx = lanes_between(0, Tn), ms = lanes_between(0, L);
  const bool silu_out = p.silu;
  int64_t b = r0 / p.channels, c = r0 % p.channels;
  int64_t slot = state_slot(p, state, indices, b);
  auto srow_at = [&](int64_t c_) { return slot >= 0 ? state + slot * p.s_sb + c_ * p.s_sc : nullptr; };
  T* srow = srow_at(c);
  __m512i sv = srow != nullptr ? load_raw(srow, ms) : _mm512_setzero_si512();
  __m512i xv = load_raw(x + b * p.x_sb + c * p.x_sc, mx);
  DeferredSaves<T, 1> saves{{ms}};
  for (int64_t r = r0; r < r1; ++r) {
    const __m512 S = to_floats<T>(sv), X = to_floats<T>(xv);
    // the weights: fp32 broadcast from memory; 16-bit ones converted as one vector, whose lanes
    // are then broadcast (one conversion, not one scalar fp16 conversion per tap)
    simd::vf wk[W];
    if constexpr (std::is_same_v<T, float>) {
      for (int k = 0; k < W; ++k) wk[k] = bcast(w[c * W + k]);
    } else {
      const __m512 wv = to_floats<T>(load_raw(w + c * W, lanes_between(0, W)));
      for (int k = 0; k < W; ++k) wk[k] = simd::vf(_mm512_permutexvar_ps(_mm512_set1_epi32(k), wv));
    }
    simd::vf a[4] = {simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f)};
#pragma GCC unroll 4
    for (int k = 0; k < W; ++k)
      a[k] += wk[k] * simd::vf(k == L ? X : _mm512_permutex2var_ps(S, tap_idx[k], X));
    simd::vf acc = bcast(bias != nullptr ? to_float(bias[c]) : 0.0f) + ((a[0] + a[1]) + (a[2] + a[3]));
    if (silu_out) acc = silu(acc);
    const __m512i new_state = _mm512_permutex2var_epi32(sv, keep_idx, xv);
    T* const cur_srow = srow;
    T* const yrow = y + b * p.y_sb + c * p.y_sc;
    if (++c == p.channels) {
      c = 0;
      ++b;
      if (r + 1 < r1) slot = state_slot(p, state, indices, b);
    }
    if (r + 1 < r1) {  // the next row's loads before this row's stores (see short_rows_run_r)
      srow = srow_at(c);
      sv = srow != nullptr ? load_raw(srow, ms) : _mm512_setzero_si512();
      xv = load_raw(x + b * p.x_sb + c * p.x_sc, mx);
    }
    store_lanes(yrow, __m512(acc), mx);
    saves.push(cur_srow, {new_state});
  }
  saves.flush();
}

// As few input registers as the row needs: one when L + T <= 16 (decode of narrow convs), two
// up to 32 (T = 16 chunks of narrow convs), else four; narrow convs of dilation 1 take
// narrow_rows_run.
template <typename T>
void short_rows_run(const CausalConv1dParams& p, const T* x, const T* w, const T* bias, T* state,
                    const int32_t* indices, T* y, int64_t r0, int64_t r1) {
  if (p.dilation == 1 && p.state_len == p.width - 1) {
    switch (p.width) {
      case 2: return narrow_rows_run<T, 2>(p, x, w, bias, state, indices, y, r0, r1);
      case 3: return narrow_rows_run<T, 3>(p, x, w, bias, state, indices, y, r0, r1);
      case 4: return narrow_rows_run<T, 4>(p, x, w, bias, state, indices, y, r0, r1);
      default: break;
    }
  }
  if (p.state_len + p.seqlen <= kShortLanes) return short_rows_run_r<T, 1>(p, x, w, bias, state, indices, y, r0, r1);
  if (p.state_len + p.seqlen <= 2 * kShortLanes) return short_rows_run_r<T, 2>(p, x, w, bias, state, indices, y, r0, r1);
  return short_rows_run_r<T, kShortRegs>(p, x, w, bias, state, indices, y, r0, r1);
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::conv::cpu

#endif  // AVX-512
