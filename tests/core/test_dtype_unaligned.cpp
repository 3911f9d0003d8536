// to_f32 reads from any address (fuzz/fuzz_safetensors under UBSan: a safetensors data offset
// need not be a multiple of the element size, and BF16/F16/F64 loads through a misaligned
// pointer are undefined). Fails in the sanitizer build without the fix.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/dtype.hpp"

namespace {

TEST(DtypeUnaligned, ToF32ReadsMisalignedElements) {
  const uint16_t bf16[3] = {0x3f80, 0xc000, 0x4040};  // 1, -2, 3
  const double f64[2] = {0.5, -4.25};
  std::vector<uint8_t> buf(64);
  std::memcpy(buf.data() + 1, bf16, sizeof bf16);
  float out[3];
  dsv3::to_f32(out, buf.data() + 1, dsv3::DType::BF16, 3);
  EXPECT_EQ(out[0], 1.f);
  EXPECT_EQ(out[1], -2.f);
  EXPECT_EQ(out[2], 3.f);
  const uint16_t f16[2] = {0x3c00, 0xc400};  // 1, -4
  std::memcpy(buf.data() + 3, f16, sizeof f16);
  dsv3::to_f32(out, buf.data() + 3, dsv3::DType::F16, 2);
  EXPECT_EQ(out[0], 1.f);
  EXPECT_EQ(out[1], -4.f);
  std::memcpy(buf.data() + 5, f64, sizeof f64);
  dsv3::to_f32(out, buf.data() + 5, dsv3::DType::F64, 2);
  EXPECT_EQ(out[0], 0.5f);
  EXPECT_EQ(out[1], -4.25f);
}

}  // namespace
