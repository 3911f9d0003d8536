// Matrix products of the training engine, generic over the scalar type: float runs the oneDNN
// sgemm of backend/cpu (multithreaded), double a plain loop used by the finite-difference
// checks. Linear layers follow nn.Linear (y = x·Wᵀ, W [out, in]); their backward is split into
// the input part and the weight part because pipeline schedules (DualPipe, zero bubble) defer
// the weight part (DeepSeek-V3 report §3.2.1).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"
#include "train/profile.hpp"

namespace dsv3::train {

// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C, row-major with leading dimensions.
template <typename S>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, S alpha, const S* A, int64_t lda,
          const S* B, int64_t ldb, S beta, S* C, int64_t ldc);

template <>
inline void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                        const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                        float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  // GEMMs of attention heads and routed experts are counted with those phases.
  const bool own = !omp_in_parallel() && !gemm_grouped();
  ProfileScope ps(own ? &StepProfile::gemm_s : nullptr);
  if (profiling() && own) ++step_profile().gemm_calls;
  cpu::gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
inline void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                         const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                         double* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
    }
}

// y[M, out] = x[M, in] · W[out, in]ᵀ (+ y when accumulate).
template <typename S>
void linear_forward(S* y, const S* x, const S* W, int64_t M, int64_t in, int64_t out,
                    bool accumulate = false) {
  gemm<S>(false, true, M, out, in, S(1), x, in, W, in, accumulate ? S(1) : S(0), y, out);
}

// dx[M, in] (+)= dy[M, out] · W[out, in]. Reads W only.
template <typename S>
void linear_backward_input(S* dx, const S* dy, const S* W, int64_t M, int64_t in, int64_t out,
                           bool accumulate = false) {
  gemm<S>(false, false, M, in, out, S(1), dy, out, W, in, accumulate ? S(1) : S(0), dx, in);
}

// dW[out, in] += dy[M, out]ᵀ · x[M, in]. Reads the saved input x.
template <typename S>
void linear_backward_weight(S* dW, const S* dy, const S* x, int64_t M, int64_t in, int64_t out) {
  if (M == 0) return;
  gemm<S>(true, false, out, in, M, S(1), dy, out, x, in, S(1), dW, in);
}

using dsv3::grow;  // core/scratch.hpp

}  // namespace dsv3::train
