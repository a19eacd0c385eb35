// Host emulation of one CTA's threads for the CUDA kernels of include/flashstream: the built-ins a
// kernel reads, __syncthreads / __syncwarp as barriers of the block's host threads, warp shuffles
// and votes through memory, and run_block() to run one block's threads. Include before the kernel
// header. Used by lowrank_attention_emu.cpp and, through mma_emu.h, the tensor-core emulators.
#pragma once
#include <cuda_runtime.h>

#include <barrier>
#include <thread>
#include <vector>

thread_local uint3 threadIdx;  // what the kernels read as built-ins
uint3 blockIdx;
#undef __launch_bounds__
#define __launch_bounds__(...)

inline constexpr int kEmuMaxWarps = 8;
static std::barrier<>* g_block_barrier = nullptr;
static std::barrier<>* g_warp_barrier[kEmuMaxWarps] = {};
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_barrier[threadIdx.x / 32]->arrive_and_wait(); }

// Shuffles and votes: every lane posts its value, then reads its partner's.
static float g_shuffle[kEmuMaxWarps][32];
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_shuffle[w][l] = v;
  __syncwarp();
  const float r = g_shuffle[w][l ^ unsigned(lane_mask)];
  __syncwarp();
  return r;
}
static int g_vote[kEmuMaxWarps][32];
inline int __any_sync(unsigned, int pred) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_vote[w][l] = pred;
  __syncwarp();
  int any = 0;
  for (int i = 0; i < 32; ++i) any |= g_vote[w][i] != 0;
  __syncwarp();
  return any;
}

// Runs one block (blockIdx set by the caller) as `threads` host threads.
template <typename F>
void run_block(int threads, F&& kernel) {
  std::barrier<> block(threads);
  std::vector<std::barrier<>*> warps;
  for (int w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
  g_block_barrier = &block;
  for (int w = 0; w < threads / 32; ++w) g_warp_barrier[w] = warps[size_t(w)];
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < unsigned(threads); ++t)
    pool.emplace_back([&kernel, t] {
      threadIdx.x = t; threadIdx.y = 0; threadIdx.z = 0;
      kernel();
    });
  for (auto& th : pool) th.join();
  for (auto* w : warps) delete w;
}
