// CUDA backend against the CPU reference; skipped cleanly without a GPU or without a CUDA build.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/ops.hpp"
#include "backend/cuda/cuda.hpp"
#include "core/rng.hpp"

using namespace dsv3;

TEST(Cuda, RmsnormMatchesCpu) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::device_summary();
  std::printf("device: %s\n", cuda::device_summary().c_str());
  const uint64_t seed = 11;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t n = 37, d = 1029;
  std::vector<float> x(size_t(n * d)), w(static_cast<size_t>(d)), want(x.size()), got(x.size());
  for (auto& v : x) v = float(rng.normal());
  for (auto& v : w) v = float(1 + 0.1 * rng.normal());
  cpu::rmsnorm_forward(want.data(), static_cast<float*>(nullptr), x.data(), w.data(), n, d, 1e-6f);
  float *dx = static_cast<float*>(cuda::device_alloc(x.size() * 4)),
        *dw = static_cast<float*>(cuda::device_alloc(w.size() * 4)),
        *dy = static_cast<float*>(cuda::device_alloc(x.size() * 4));
  cuda::copy_to_device(dx, x.data(), x.size() * 4);
  cuda::copy_to_device(dw, w.data(), w.size() * 4);
  cuda::rmsnorm_forward(dy, nullptr, dx, dw, n, d, 1e-6f);
  cuda::synchronize();
  cuda::copy_to_host(got.data(), dy, got.size() * 4);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5f * (1 + std::fabs(want[i])));
  cuda::device_free(dx);
  cuda::device_free(dw);
  cuda::device_free(dy);
}

TEST(Cuda, StubReportsAbsenceClearly) {
  if (cuda::available()) GTEST_SKIP() << "a device is present";
  EXPECT_FALSE(cuda::device_summary().empty());
  EXPECT_EQ(cuda::device_count(), 0);
}
