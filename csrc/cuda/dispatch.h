// Compile-time dtype dispatch for CUDA launchers: fn(T{}) with T the kernels' storage type.
#pragma once
#include <cuda_runtime.h>

#include "flashstream/common/dtype.h"

namespace flashstream::cuda {

template <typename Fn>
cudaError_t by_dtype(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::f16: return fn(f16_t{});
    case DType::bf16: return fn(bf16_t{});
    default: return fn(float{});
  }
}

}  // namespace flashstream::cuda
