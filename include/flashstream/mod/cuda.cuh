// MoD CUDA kernels and torch-free launchers.
//
// gather / scatter: the flat item space is (row, 16-byte chunk of the row), so consecutive threads
// move consecutive chunks of a D-wide row (coalesced, vectorised); rows whose bytes are not a
// multiple of 16 or that are not 16-byte aligned fall back to one element per item.
// gather_rmsnorm: one warp per row (sum of squares by shuffles, then a second, cache-hot pass).
// route: see the comment above the route kernels.
#pragma once
#include <cstdint>

#include "flashstream/common/cuda_utils.cuh"
#include "flashstream/common/dtype.h"
#include "flashstream/mod/indices.h"
#include "flashstream/mod/route.h"

namespace flashstream::mod::cuda {

using flashstream::cuda::grid_for;
using flashstream::cuda::load_row;
using flashstream::cuda::store_row;

inline constexpr int kThreads = 256;

template <typename T>
inline constexpr int kVec = 16 / int(sizeof(T));

// ---- index validation --------------------------------------------------------------------------
// bad (one int64, preset to INT64_MAX) receives min over bad entries of (flat position * 4 + status).
__global__ void __launch_bounds__(kThreads)
check_indices_kernel(const int64_t* __restrict__ idx, int64_t B, int64_t K, int64_t T, bool sorted,
                     unsigned long long* __restrict__ bad) {
  const int64_t n = B * K, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < n; r += stride) {
    const int64_t k = r % K;
    const int st = index_status(idx + (r - k), k, T, sorted);
    if (st != kIndexOk) atomicMin(bad, (unsigned long long)(r * 4 + st));
  }
}

// ---- gather ------------------------------------------------------------------------------------
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ idx, T* __restrict__ out, int64_t rows,
              int64_t K, int64_t T_, int64_t D) {
  const int64_t chunks = D / V, n = rows * chunks, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t it = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; it < n; it += stride) {
    const int64_t r = it / chunks, c = it - r * chunks;
    const int64_t i = idx[r];
    T v[V];
    if (i >= 0 && i < T_) {
      load_row(x + ((r / K) * T_ + i) * D + c * V, v);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = from_float<T>(0.0f);
    }
    store_row(out + r * D + c * V, v);
  }
}

// ---- scatter: out[b, idx] = x[b, idx] + w * delta (out already holds x, or is x) ---------------
// kOutput: `delta` is the block's output y = x + f, and out = x + w * (y - x).
template <bool kOutput, typename T, int V>
__global__ void __launch_bounds__(kThreads)
scatter_kernel(const T* x, const T* __restrict__ delta, const int64_t* __restrict__ idx,
               const T* __restrict__ weights, T* out, int64_t rows, int64_t K, int64_t T_, int64_t D) {
  const int64_t chunks = D / V, n = rows * chunks, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t it = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; it < n; it += stride) {
    const int64_t r = it / chunks, c = it - r * chunks;
    const int64_t i = idx[r];
    if (!(i >= 0 && i < T_)) continue;
    const float w = weights ? to_float(weights[r]) : 1.0f;
    const int64_t off = ((r / K) * T_ + i) * D + c * V;
    T xv[V], dv[V], ov[V];
    load_row(x + off, xv);
    load_row(delta + r * D + c * V, dv);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xf = to_float(xv[j]), df = to_float(dv[j]);
      ov[j] = from_float<T>(kOutput ? xf + w * (df - xf) : xf + w * df);
    }
    store_row(out + off, ov);
  }
}

// ---- gather + RMSNorm: one warp per row ----------------------------------------------------------
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
gather_rmsnorm_kernel(const T* __restrict__ x, const int64_t* __restrict__ idx, const T* __restrict__ weight,
                      float eps, T* __restrict__ out, T* __restrict__ normed, int64_t rows, int64_t K, int64_t T_,
                      int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t chunks = D / V;
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const int64_t i = idx[r];
    T* dst = out + r * D;
    T* nrm = normed + r * D;
    if (!(i >= 0 && i < T_)) {
      T z[V];
#pragma unroll
      for (int j = 0; j < V; ++j) z[j] = from_float<T>(0.0f);
      for (int64_t c = lane; c < chunks; c += 32) { store_row(dst + c * V, z); store_row(nrm + c * V, z); }
      continue;
    }
    const T* src = x + ((r / K) * T_ + i) * D;
    float ss = 0.0f;
    for (int64_t c = lane; c < chunks; c += 32) {
      T v[V];
      load_row(src + c * V, v);
      store_row(dst + c * V, v);
#pragma unroll
      for (int j = 0; j < V; ++j) { const float f = to_float(v[j]); ss += f * f; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
    const float scale = rsqrtf(ss / float(D) + eps);
    for (int64_t c = lane; c < chunks; c += 32) {
      T v[V], w[V], o[V];
      load_row(src + c * V, v);
      load_row(weight + c * V, w);
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = from_float<T>(to_float(v[j]) * scale * to_float(w[j]));
      store_row(nrm + c * V, o);
    }
  }
}

// ---- route ---------------------------------------------------------------------------------------
// Three kernels, per row b of scores [B, T]:
//  A compact (one block per row): the routable tokens in stream order become compact positions
//    p = 0..n_r-1 with their key, token and group id; non-routable tokens are marked kept. A
//    second sweep labels each p with the compact start of its group (a max-scan of run starts);
//    group ids that decrease raise the flag. Groups are then contiguous ranges of p.
//  B select (blocks over compact positions): group [s, e) is found by binary search on the
//    non-decreasing starts; small groups (n <= kSmallGroup) rank each token by comparing keys,
//    larger ones are owned by the block holding their start, which finds the k-th largest key by
//    radix selection (8-bit digits, block histograms) and marks the whole group.
//  C write (one block per row): a block scan over the keep marks writes the first K kept tokens
//    in stream order with their weights, pads the rest, and records the row's count.
inline constexpr int kRouteThreads = 1024;
inline constexpr int kSmallGroup = 1024;

struct RouteScratch {
  uint64_t* key;    // [B, T] keys at compact positions
  int32_t* tok;     // [B, T] token of each compact position
  int64_t* gid;     // [B, T] group id of each compact position
  int32_t* start;   // [B, T] compact start of each position's group
  int32_t* n_r;     // [B] routable tokens per row
  uint8_t* keep;    // [B, T]
  int64_t* count;   // [B] kept tokens per row
  int* flags;       // [2]: bit 0 groups decrease, bit 1 a row exceeds K; [1] = max count
};

enum RouteFlag : int { kGroupsDecrease = 1, kRowOverflow = 2 };

// Block-wide inclusive scan of one int per thread (sum or max), for kRouteThreads threads.
template <bool kMax>
__device__ FS_INLINE int block_scan(int v, int* smem /* [32] */, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xFFFFFFFFu, v, o);
    if (lane >= o) v = kMax ? max(v, u) : v + u;
  }
  if (lane == 31) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int w = smem[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int u = __shfl_up_sync(0xFFFFFFFFu, w, o);
      if (lane >= o) w = kMax ? max(w, u) : w + u;
    }
    smem[lane] = w;
  }
  __syncthreads();
  if (warp > 0) v = kMax ? max(v, smem[warp - 1]) : v + smem[warp - 1];
  *total = smem[31];
  __syncthreads();  // smem is reused by the next scan
  return v;
}

template <typename S>
__global__ void __launch_bounds__(kRouteThreads)
route_compact_kernel(const S* __restrict__ scores, const int64_t* __restrict__ groups,
                     const uint8_t* __restrict__ routable, int64_t T, RouteScratch s) {
  __shared__ int smem[32];
  const int64_t b = blockIdx.x, row = b * T;
  int base = 0;
  for (int64_t t0 = 0; t0 < T; t0 += kRouteThreads) {
    const int64_t t = t0 + threadIdx.x;
    const bool in = t < T;
    const bool r = in && (routable == nullptr || routable[row + t]);
    if (in && !r) s.keep[row + t] = 1;
    int total;
    const int incl = block_scan<false>(r ? 1 : 0, smem, &total);
    if (r) {
      const int64_t p = row + base + incl - 1;
      s.key[p] = token_key(to_float(scores[row + t]), t);
      s.tok[p] = int32_t(t);
      s.gid[p] = groups ? groups[row + t] : 0;
    }
    base += total;
  }
  if (threadIdx.x == 0) s.n_r[b] = base;
  __syncthreads();  // the compact arrays written above are read by other threads below
  int carry = 0;
  for (int p0 = 0; p0 < base; p0 += kRouteThreads) {
    const int p = p0 + threadIdx.x;
    int st = -1;
    if (p < base) {
      const int64_t g = s.gid[row + p];
      const bool first = p == 0 || s.gid[row + p - 1] != g;
      if (p > 0 && s.gid[row + p - 1] > g) atomicOr(&s.flags[0], kGroupsDecrease);
      st = first ? p : -1;
    }
    int total;
    const int incl = max(block_scan<true>(st, smem, &total), carry);
    if (p < base) s.start[row + p] = incl;
    carry = max(carry, total);
  }
}

// Radix selection of the k-th largest key of key[s, e) (unique keys, 1 <= k < e - s) by the block;
// returns a threshold with exactly k keys >= it.
__device__ uint64_t block_kth_largest(const uint64_t* __restrict__ key, int s, int e, int k) {
  __shared__ unsigned hist[256];
  __shared__ uint64_t prefix_s;
  __shared__ int remaining_s, done_s;
  if (threadIdx.x == 0) { prefix_s = 0; remaining_s = k; done_s = 0; }
  for (int shift = 56; shift >= 0; shift -= 8) {
    if (threadIdx.x < 256) hist[threadIdx.x] = 0;
    __syncthreads();
    const uint64_t prefix = prefix_s;
    const uint64_t hi = shift == 56 ? 0 : (~0ull << (shift + 8));
    for (int p = s + threadIdx.x; p < e; p += blockDim.x) {
      const uint64_t v = key[p];
      if ((v & hi) == prefix) atomicAdd(&hist[(v >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l sums bins 255-8l .. 248-8l (descending); the first lane whose running total reaches
      // `remaining` holds the digit.
      const int lane = threadIdx.x;
      unsigned c = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) c += hist[255 - 8 * lane - j];
      unsigned incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned u = __shfl_up_sync(0xFFFFFFFFu, incl, o);
        if (lane >= o) incl += u;
      }
      const unsigned rem = unsigned(remaining_s);
      const unsigned hit = __ballot_sync(0xFFFFFFFFu, incl >= rem);
      if (lane == __ffs(hit) - 1) {
        unsigned left = rem - (incl - c);
        int d = 255 - 8 * lane;
        for (int j = 0; j < 8; ++j, --d) {
          if (hist[d] >= left) break;
          left -= hist[d];
        }
        prefix_s = prefix | (uint64_t(d) << shift);
        remaining_s = int(left);
        done_s = hist[d] == left;  // all keys of this digit are kept: the threshold is exact
      }
    }
    __syncthreads();
    if (done_s) break;
  }
  const uint64_t thr = prefix_s;
  __syncthreads();
  return thr;
}

__global__ void __launch_bounds__(kRouteThreads)
route_select_kernel(int64_t T, double capacity, RouteScratch s) {
  __shared__ int owners[kRouteThreads / kSmallGroup + 1];
  __shared__ int n_owners;
  const int64_t b = blockIdx.y, row = b * T;
  const int n_r = s.n_r[b];
  const int p0 = int(blockIdx.x) * kRouteThreads;
  if (p0 >= n_r) return;  // uniform per block
  if (threadIdx.x == 0) n_owners = 0;
  __syncthreads();
  const int32_t* start = s.start + row;
  const uint64_t* key = s.key + row;
  const int p = p0 + int(threadIdx.x);
  if (p < n_r) {
    const int st = start[p];
    int lo = p + 1, hi = n_r;  // first position past the group: starts are non-decreasing
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (start[mid] == st) lo = mid + 1; else hi = mid;
    }
    const int n = lo - st;
    const int64_t k = keep_count(capacity, n);
    if (k == n || k == 0) {
      s.keep[row + s.tok[row + p]] = k == n;
    } else if (n <= kSmallGroup) {
      const uint64_t mine = key[p];
      int above = 0;
      for (int q = st; q < st + n; ++q) above += key[q] > mine;
      s.keep[row + s.tok[row + p]] = above < k;
    } else if (p == st) {
      owners[atomicAdd(&n_owners, 1)] = st;
    }
  }
  __syncthreads();
  for (int o = 0; o < n_owners; ++o) {
    const int st = owners[o];
    int lo = st + 1, hi = n_r;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (start[mid] == st) lo = mid + 1; else hi = mid;
    }
    const int n = lo - st;
    const uint64_t thr = block_kth_largest(key, st, st + n, int(keep_count(capacity, n)));
    for (int q = st + int(threadIdx.x); q < st + n; q += blockDim.x) s.keep[row + s.tok[row + q]] = key[q] >= thr;
  }
}

// K == 0 (and null outputs): only counts the kept tokens and their maximum (flags[1]).
template <typename S>
__global__ void __launch_bounds__(kRouteThreads)
route_write_kernel(const S* __restrict__ scores, const uint8_t* __restrict__ routable, int64_t T, int64_t K,
                   int64_t* __restrict__ indices, S* __restrict__ weights, RouteScratch s) {
  __shared__ int smem[32];
  const int64_t b = blockIdx.x, row = b * T;
  int base = 0;
  for (int64_t t0 = 0; t0 < T; t0 += kRouteThreads) {
    const int64_t t = t0 + threadIdx.x;
    const bool kept = t < T && s.keep[row + t];
    int total;
    const int pos = base + block_scan<false>(kept ? 1 : 0, smem, &total) - 1;
    if (kept && pos < K) {
      const bool r = routable == nullptr || routable[row + t];
      indices[b * K + pos] = t;
      weights[b * K + pos] = from_float<S>(r ? sigmoid(to_float(scores[row + t])) : 1.0f);
    }
    base += total;
  }
  for (int64_t k = base + int64_t(threadIdx.x); k < K; k += blockDim.x) {
    indices[b * K + k] = -1;
    weights[b * K + k] = from_float<S>(0.0f);
  }
  if (threadIdx.x == 0) {
    s.count[b] = base;
    atomicMax(&s.flags[1], base);
    if (K > 0 && base > K) atomicOr(&s.flags[0], kRowOverflow);
  }
}

// ---- launchers -------------------------------------------------------------------------------------

inline bool vec_ok(int64_t D, int elem, const void* a, const void* b = nullptr, const void* c = nullptr,
                   const void* d = nullptr) {
  using flashstream::cuda::aligned16;
  return (D * elem) % 16 == 0 && aligned16(a) && (!b || aligned16(b)) && (!c || aligned16(c)) && (!d || aligned16(d));
}

inline cudaError_t launch_check_indices(const int64_t* idx, int64_t B, int64_t K, int64_t T, bool sorted,
                                        unsigned long long* bad, cudaStream_t stream) {
  check_indices_kernel<<<grid_for(B * K, kThreads), kThreads, 0, stream>>>(idx, B, K, T, sorted, bad);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gather(const T* x, const int64_t* idx, T* out, int64_t B, int64_t K, int64_t T_, int64_t D,
                          cudaStream_t stream) {
  const int64_t rows = B * K;
  if (vec_ok(D, sizeof(T), x, out))
    gather_kernel<T, kVec<T>><<<grid_for(rows * (D / kVec<T>), kThreads), kThreads, 0, stream>>>(x, idx, out, rows, K, T_, D);
  else
    gather_kernel<T, 1><<<grid_for(rows * D, kThreads), kThreads, 0, stream>>>(x, idx, out, rows, K, T_, D);
  return cudaGetLastError();
}

template <bool kOutput, typename T>
cudaError_t launch_scatter(const T* x, const T* delta, const int64_t* idx, const T* weights, T* out, int64_t B,
                           int64_t K, int64_t T_, int64_t D, cudaStream_t stream) {
  const int64_t rows = B * K;
  if (vec_ok(D, sizeof(T), x, delta, out))
    scatter_kernel<kOutput, T, kVec<T>><<<grid_for(rows * (D / kVec<T>), kThreads), kThreads, 0, stream>>>(
        x, delta, idx, weights, out, rows, K, T_, D);
  else
    scatter_kernel<kOutput, T, 1><<<grid_for(rows * D, kThreads), kThreads, 0, stream>>>(
        x, delta, idx, weights, out, rows, K, T_, D);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gather_rmsnorm(const T* x, const int64_t* idx, const T* weight, float eps, T* out, T* normed,
                                  int64_t B, int64_t K, int64_t T_, int64_t D, cudaStream_t stream) {
  const int64_t rows = B * K;
  const unsigned blocks = grid_for(rows * 32, kThreads);
  if (vec_ok(D, sizeof(T), x, weight, out, normed))
    gather_rmsnorm_kernel<T, kVec<T>><<<blocks, kThreads, 0, stream>>>(x, idx, weight, eps, out, normed, rows, K, T_, D);
  else
    gather_rmsnorm_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(x, idx, weight, eps, out, normed, rows, K, T_, D);
  return cudaGetLastError();
}

// Kernels A and B: marks s.keep. s.flags must be zeroed by the caller.
template <typename S>
cudaError_t launch_route_mark(const S* scores, const int64_t* groups, const uint8_t* routable, int64_t B, int64_t T,
                              double capacity, const RouteScratch& s, cudaStream_t stream) {
  route_compact_kernel<S><<<unsigned(B), kRouteThreads, 0, stream>>>(scores, groups, routable, T, s);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned((T + kRouteThreads - 1) / kRouteThreads), unsigned(B));
  route_select_kernel<<<grid, kRouteThreads, 0, stream>>>(T, capacity, s);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_route_write(const S* scores, const uint8_t* routable, int64_t B, int64_t T, int64_t K,
                               int64_t* indices, S* weights, const RouteScratch& s, cudaStream_t stream) {
  route_write_kernel<S><<<unsigned(B), kRouteThreads, 0, stream>>>(scores, routable, T, K, indices, weights, s);
  return cudaGetLastError();
}

}  // namespace flashstream::mod::cuda
