// Codec tests: bf16/f16/fp8 conversions against exhaustive or independent definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/dtype.hpp"
#include "core/rng.hpp"

using namespace dsv3;

TEST(DType, Bf16RoundTripAndRounding) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down to 1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
}

TEST(DType, E4M3AllCodesRoundTrip) {
  for (int v = 0; v < 256; ++v) {
    float f = fp8_e4m3_to_f32(uint8_t(v));
    if (std::isnan(f)) continue;
    if (f == 0) continue;  // -0 and +0
    EXPECT_EQ(f32_to_fp8_e4m3(f), v) << v;
  }
  EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1e6f)), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0x1p-9f);
}

TEST(DType, E4M3IsNearestEvenByBruteForce) {
  uint64_t seed = 1234;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (int i = 0; i < 20000; ++i) {
    float x = float(rng.normal() * std::pow(10.0, rng.uniform() * 6 - 4));
    if (std::fabs(x) > 448) continue;
    uint8_t c = f32_to_fp8_e4m3(x);
    float got = fp8_e4m3_to_f32(c);
    double best = 1e30;
    for (int v = 0; v < 256; ++v) {
      float f = fp8_e4m3_to_f32(uint8_t(v));
      if (!std::isnan(f)) best = std::min(best, std::fabs(double(f) - x));
    }
    EXPECT_EQ(std::fabs(double(got) - x), best) << x;
  }
}

TEST(DType, F16Exhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << h;
  }
}

TEST(DType, E5M2RoundTrip) {
  for (int v = 0; v < 256; ++v) {
    float f = fp8_e5m2_to_f32(uint8_t(v));
    if (std::isnan(f) || f == 0) continue;
    EXPECT_EQ(f32_to_fp8_e5m2(f), v) << v;
  }
}
