// Tensor-core building blocks for bf16 / fp16 kernels (sm_80+): cp.async, mma.sync.m16n8k16 with
// fp32 accumulation, ldmatrix.m8n8.x4 and fragment loads (maps in mma_frag.h). Used by
// lowrank/cuda_tc.cuh and sink/cuda_tc.cuh.
//
// Host emulation hooks (tests/cuda_emu/mma_emu.h defines them): compiled by a host compiler,
// FS_MMA_HOST_CP_ASYNC / _COMMIT / _WAIT stand in for cp.async and its groups (without them,
// FS_MMA_HOST_EMU makes cp.async a synchronous copy), FS_MMA_HOST_MMA(c, a, b, bf16) and
// FS_MMA_HOST_LDSM(d, row, trans) for one lane's part of a warp's mma.sync / ldmatrix.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "flashstream/common/dtype.h"
#include "flashstream/common/macros.h"
#include "flashstream/common/mma_frag.h"

namespace flashstream::mma {

// 16 bytes global -> shared, asynchronous; zero-filled (nothing read) when !valid.
FS_DEVICE FS_INLINE void cp_async16(uint16_t* smem, const uint16_t* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
#elif defined(FS_MMA_HOST_CP_ASYNC)
  FS_MMA_HOST_CP_ASYNC(smem, gmem, valid);
#elif defined(FS_MMA_HOST_EMU)
  if (valid) std::memcpy(smem, gmem, 16);
  else std::memset(smem, 0, 16);
#endif
}

FS_DEVICE FS_INLINE void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(FS_MMA_HOST_CP_COMMIT)
  FS_MMA_HOST_CP_COMMIT();
#endif
}

// Waits until at most `Pending` committed groups are still in flight.
template <int Pending>
FS_DEVICE FS_INLINE void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#elif defined(FS_MMA_HOST_CP_WAIT)
  FS_MMA_HOST_CP_WAIT(Pending);
#endif
}

// c += a b for one m16n8k16 tile (row.col, fp32 accumulators).
template <typename T>
FS_DEVICE FS_INLINE void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // the dispatch rule never launches this below sm_80
#elif defined(FS_MMA_HOST_MMA)
  FS_MMA_HOST_MMA(c, a, b, (std::is_same_v<T, bf16_t>));
#endif
}

// ldmatrix.m8n8.x4(.trans).b16: four 8 x 8 matrices of 16-bit elements, each lane giving one row
// address (tc_params.h, ldsm_*); with .trans each matrix arrives transposed.
template <bool Trans>
FS_DEVICE FS_INLINE void ldmatrix_x4(uint32_t (&d)[4], const uint16_t* row) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(s));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(s));
  }
#elif defined(FS_MMA_HOST_LDSM)
  FS_MMA_HOST_LDSM(d, row, Trans);
#endif
}

// A fragment (16 x 16) of a row-major [m][k] shared buffer (row stride LD halves) at s.
template <int LD>
FS_DEVICE FS_INLINE void load_frag_a(uint32_t (&a)[4], const uint16_t* s, int lane) {
  ldmatrix_x4<false>(a, s + ldsm_a_row(lane) * LD + ldsm_a_col(lane));
}

// B fragments of two neighbouring n8 tiles (16 x 16 of a row-major [k][n] shared buffer, row
// stride LD halves, at s): b[0..1] for columns 0-7, b[2..3] for 8-15.
template <int LD>
FS_DEVICE FS_INLINE void load_frag_b2(uint32_t (&b)[4], const uint16_t* s, int lane) {
  ldmatrix_x4<true>(b, s + ldsm_b_k(lane) * LD + ldsm_b_n(lane));
}

template <typename T>
FS_DEVICE FS_INLINE uint32_t pack2(float lo, float hi) {
  return uint32_t(from_float<T>(lo).bits) | (uint32_t(from_float<T>(hi).bits) << 16);
}

}  // namespace flashstream::mma
