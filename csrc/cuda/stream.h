// The current CUDA stream and a device guard for CUDA bindings, taken from torch's C shim so the
// bindings compile against CPU-only torch headers too (no c10/cuda), as `make cuda-check` does.
#pragma once
#include <atomic>

#include <cuda_runtime.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>

namespace flashstream::cuda {

// Makes `t`'s device current for the scope, like c10::cuda::CUDAGuard.
class DeviceGuard {
 public:
  explicit DeviceGuard(const at::Tensor& t) {
    TORCH_CHECK(aoti_torch_create_cuda_guard(t.device().index(), &guard_) == AOTI_TORCH_SUCCESS,
                "flashstream: could not select CUDA device ", t.device());
  }
  ~DeviceGuard() { aoti_torch_delete_cuda_guard(guard_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  CUDAGuardHandle guard_ = nullptr;
};

inline cudaStream_t current_stream(const at::Tensor& t) {
  void* stream = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.device().index(), &stream) == AOTI_TORCH_SUCCESS,
              "flashstream: could not get the current CUDA stream of ", t.device());
  return static_cast<cudaStream_t>(stream);
}

inline bool is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  TORCH_CHECK(cudaStreamIsCapturing(stream, &status) == cudaSuccess, "flashstream: cudaStreamIsCapturing failed");
  return status != cudaStreamCaptureStatusNone;
}

// Streaming multiprocessors of `t`'s device, looked up once per device (grid sizing).
inline int64_t multiprocessors(const at::Tensor& t) {
  static std::atomic<int> cached[64] = {};
  const int dev = t.device().index();
  if (dev < 0 || dev >= 64) return 1;
  int n = cached[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    TORCH_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess,
                "flashstream: cudaDeviceGetAttribute(MultiProcessorCount) failed on ", t.device());
    n = n > 0 ? n : 1;
    cached[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

// 10 * major + minor of `t`'s device, looked up once per device (tensor-core dispatch rules).
inline int compute_capability(const at::Tensor& t) {
  static std::atomic<int> cached[64] = {};
  const int dev = t.device().index();
  if (dev < 0 || dev >= 64) return 0;  // unknown: the SIMT kernels
  int cc = cached[dev].load(std::memory_order_relaxed);
  if (cc == 0) {
    int major = 0, minor = 0;
    TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess,
                "flashstream: cudaDeviceGetAttribute(ComputeCapability) failed on ", t.device());
    cc = 10 * major + minor;
    cached[dev].store(cc, std::memory_order_relaxed);
  }
  return cc;
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "flashstream.", op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace flashstream::cuda
