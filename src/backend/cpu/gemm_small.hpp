// FP32 products with few rows (M up to a few dozen) for the latent attention of decode steps:
// scores = q·Kᵀ and out = p·V over the latent cache. A library GEMM call costs more than such a
// product (dnnl_sgemm also allocates its packing buffers per call), and the positions S change
// every step, so a cached primitive does not fit either. Register tiles, row-major, no packing.
#pragma once
#include <cstdint>

namespace dsv3::cpu {

// C[M, N] = alpha · A[M, K] · B[N, K]ᵀ + beta · C (beta 0: C is not read). Calling thread only.
void gemm_small_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// C[M, N] = alpha · (A[M, K] · B[N, K]ᵀ + A2[M, K2] · B2[N, K2]ᵀ): both products in the same
// accumulators, one horizontal sum per output (the scores of latent attention over the latents
// and the rope keys, stored apart). Calling thread only.
void gemm_small_nt2(int64_t M, int64_t N, float alpha, int64_t K, const float* A, int64_t lda,
                    const float* B, int64_t ldb, int64_t K2, const float* A2, int64_t lda2,
                    const float* B2, int64_t ldb2, float* C, int64_t ldc);

// C[M, N] = A[M, K] · B[K, N] (+ C when accumulate). Calling thread only.
void gemm_small_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool accumulate);

}  // namespace dsv3::cpu
