// The few-row FP32 products of backend/cpu/gemm_small.hpp against a plain double-precision loop:
// every tile shape (rows and columns 1..4 in a tile, column tails, K tails), leading dimensions
// wider than the operands, alpha/beta and accumulation.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/gemm_small.hpp"
#include "core/rng.hpp"

using namespace dsv3;

namespace {

std::vector<float> random_vec(Rng& rng, size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.next_u64() >> 40) / float(1 << 24) * 2.0f - 1.0f;
  return v;
}

}  // namespace

TEST(GemmSmall, NtMatchesLoop) {
  const uint64_t seed = 11;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M : {1, 2, 3, 4, 5, 16, 33})
    for (int64_t N : {1, 3, 4, 7, 130})
      for (int64_t K : {1, 15, 16, 17, 64, 259}) {
        const int64_t lda = K + 3, ldb = K + 5, ldc = N + 2;
        auto A = random_vec(rng, size_t(M * lda)), B = random_vec(rng, size_t(N * ldb));
        auto C = random_vec(rng, size_t(M * ldc));
        const auto C0 = C;
        const float alpha = 0.75f, beta = (M + N) % 2 ? 0.0f : 0.5f;
        cpu::gemm_small_nt(M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < ldc; ++n) {
            const size_t i = size_t(m * ldc + n);
            if (n >= N) {  // outside the product: untouched
              ASSERT_EQ(C[i], C0[i]);
              continue;
            }
            double ref = 0;
            for (int64_t k = 0; k < K; ++k)
              ref += double(A[size_t(m * lda + k)]) * B[size_t(n * ldb + k)];
            ref = alpha * ref + (beta == 0.0f ? 0.0 : beta * double(C0[i]));
            ASSERT_NEAR(C[i], ref, 1e-5 * (1 + std::sqrt(double(K)))) << M << "x" << N << "x" << K;
          }
      }
}

// Two products summed before one horizontal sum (the latent and rope parts of the scores).
TEST(GemmSmall, Nt2MatchesLoop) {
  const uint64_t seed = 13;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M : {1, 2, 3, 4, 5, 16, 33})
    for (int64_t N : {1, 3, 4, 7, 16, 130})
      for (int64_t K : {1, 16, 17, 256})
        for (int64_t K2 : {0, 5, 32, 33}) {
          const int64_t lda = K + 3, ldb = K + 5, lda2 = K2 + 7, ldb2 = K2 + 1, ldc = N + 2;
          auto A = random_vec(rng, size_t(M * lda)), B = random_vec(rng, size_t(N * ldb));
          auto A2 = random_vec(rng, size_t(M * lda2)), B2 = random_vec(rng, size_t(N * ldb2));
          auto C = random_vec(rng, size_t(M * ldc));
          const auto C0 = C;
          const float alpha = 0.125f;
          cpu::gemm_small_nt2(M, N, alpha, K, A.data(), lda, B.data(), ldb, K2, A2.data(), lda2,
                              B2.data(), ldb2, C.data(), ldc);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < ldc; ++n) {
              const size_t i = size_t(m * ldc + n);
              if (n >= N) {  // outside the product: untouched
                ASSERT_EQ(C[i], C0[i]);
                continue;
              }
              double ref = 0;
              for (int64_t k = 0; k < K; ++k)
                ref += double(A[size_t(m * lda + k)]) * B[size_t(n * ldb + k)];
              for (int64_t k = 0; k < K2; ++k)
                ref += double(A2[size_t(m * lda2 + k)]) * B2[size_t(n * ldb2 + k)];
              ASSERT_NEAR(C[i], alpha * ref, 1e-5 * (1 + std::sqrt(double(K + K2))))
                  << M << "x" << N << "x" << K << "+" << K2;
            }
        }
}

// Every output of a tile is summed as an output alone is (reduce16 adds the same pairs of lanes
// for all 16), so a product is bit for bit its one-row, one-column product: the scores of a
// head do not depend on how many heads a call takes.
TEST(GemmSmall, NtTileEqualsSingleOutputs) {
  const uint64_t seed = 14;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  const int64_t M = 7, N = 9, K = 77;
  auto A = random_vec(rng, size_t(M * K)), B = random_vec(rng, size_t(N * K));
  std::vector<float> C(size_t(M * N));
  cpu::gemm_small_nt(M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float one = 0;
      cpu::gemm_small_nt(1, 1, K, 1.0f, A.data() + m * K, K, B.data() + n * K, K, 0.0f, &one, 1);
      ASSERT_EQ(C[size_t(m * N + n)], one) << m << "," << n;
    }
}

TEST(GemmSmall, NnMatchesLoop) {
  const uint64_t seed = 12;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M : {1, 2, 3, 4, 5, 16, 33})
    for (int64_t N : {1, 15, 16, 17, 64, 65, 200})
      for (int64_t K : {1, 7, 129})
        for (bool acc : {false, true}) {
          const int64_t lda = K + 1, ldb = N + 3, ldc = N + 4;
          auto A = random_vec(rng, size_t(M * lda)), B = random_vec(rng, size_t(K * ldb));
          auto C = random_vec(rng, size_t(M * ldc));
          const auto C0 = C;
          cpu::gemm_small_nn(M, N, K, A.data(), lda, B.data(), ldb, C.data(), ldc, acc);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < ldc; ++n) {
              const size_t i = size_t(m * ldc + n);
              if (n >= N) {
                ASSERT_EQ(C[i], C0[i]);
                continue;
              }
              double ref = acc ? double(C0[i]) : 0.0;
              for (int64_t k = 0; k < K; ++k)
                ref += double(A[size_t(m * lda + k)]) * B[size_t(k * ldb + n)];
              ASSERT_NEAR(C[i], ref, 1e-5 * (1 + std::sqrt(double(K))))
                  << M << "x" << N << "x" << K;
            }
        }
}
