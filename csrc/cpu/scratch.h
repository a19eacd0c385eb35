// Per-thread fp32 scratch for the CPU kernels, 64-byte aligned: the kernels store and reload
// whole vectors in it, and an AVX-512 vector that straddles two cache lines costs a second access
// on every load (new float[] only promises 16 bytes, so speed would depend on the heap's luck).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace flashstream::cpu {

class AlignedScratch {
 public:
  explicit AlignedScratch(int64_t floats) {
    const size_t bytes = (size_t(floats > 0 ? floats : 1) * sizeof(float) + 63) / 64 * 64;
    ptr_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (ptr_ == nullptr) throw std::bad_alloc();
  }
  ~AlignedScratch() { std::free(ptr_); }
  AlignedScratch(const AlignedScratch&) = delete;
  AlignedScratch& operator=(const AlignedScratch&) = delete;
  float* get() const { return ptr_; }

 private:
  float* ptr_ = nullptr;
};

}  // namespace flashstream::cpu
