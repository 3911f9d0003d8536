// NaN / Inf weights are refused with the tensor's name (issue 12): the exponent-bit scan of every
// float format, and the whole-store check on the tiny-v3 checkpoint with one value poisoned.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "core/error.hpp"
#include "core/finite.hpp"
#include "io/finite.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

TEST(Finite, ScansEveryFloatFormat) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = INFINITY;
  std::vector<float> f = {1, -2, 3e38f, 0, -0.f, 1e-40f};
  EXPECT_EQ(first_non_finite(DType::F32, f.data(), int64_t(f.size())), -1);
  f[4] = nan;
  EXPECT_EQ(first_non_finite(DType::F32, f.data(), int64_t(f.size())), 4);
  f[4] = 0;
  f[2] = -inf;
  EXPECT_EQ(first_non_finite(DType::F32, f.data(), int64_t(f.size())), 2);

  std::vector<uint16_t> bf = {0x3f80, 0xbf80, 0x7f7f, 0x7f80};  // 1, -1, max, +inf
  EXPECT_EQ(first_non_finite(DType::BF16, bf.data(), 3), -1);
  EXPECT_EQ(first_non_finite(DType::BF16, bf.data(), 4), 3);
  std::vector<uint16_t> h = {0x3c00, 0x7bff, 0xfe00};  // 1, max, NaN
  EXPECT_EQ(first_non_finite(DType::F16, h.data(), 3), 2);
  std::vector<uint8_t> e4 = {0x7e, 0xfe, 0x7f};  // 448, -448, NaN
  EXPECT_EQ(first_non_finite(DType::F8_E4M3, e4.data(), 3), 2);
  std::vector<uint8_t> e5 = {0x7b, 0x7c};  // 57344, +inf
  EXPECT_EQ(first_non_finite(DType::F8_E5M2, e5.data(), 2), 1);
  std::vector<double> d = {1.0, std::numeric_limits<double>::quiet_NaN()};
  EXPECT_EQ(first_non_finite(DType::F64, d.data(), 2), 1);
  std::vector<int32_t> i = {-1, 0x7f800000};
  EXPECT_EQ(first_non_finite(DType::I32, i.data(), 2), -1);

  f = {1, 2, nan};
  try {
    check_finite(f.data(), 3, "grad of w");
    ADD_FAILURE() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grad of w: element 2"), std::string::npos) << e.what();
  }
}

// tiny-v3 rewritten with one element of `poison` set to `value`.
std::string poisoned_copy(const std::string& poison, float value) {
  const auto src = io::TensorStore::open_dir(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  io::SafetensorsWriter w;
  for (const auto& n : src.names()) {
    const io::TensorInfo& t = src.get(n);
    std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
    if (n == poison) {
      EXPECT_TRUE(t.dtype == DType::F32 || t.dtype == DType::BF16) << dtype_name(t.dtype);
      if (t.dtype == DType::F32) {
        std::memcpy(bytes.data() + 4, &value, 4);
      } else {
        uint32_t u;
        std::memcpy(&u, &value, 4);
        const uint16_t b = uint16_t(u >> 16);
        std::memcpy(bytes.data() + 2, &b, 2);
      }
    }
    w.add(n, t.dtype, t.shape, bytes.data());
  }
  const std::string path =
      (fs::temp_directory_path() / ("dsv3_finite_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  w.write(path);
  return path;
}

void expect_refused(const std::string& tensor, float value) {
  const std::string path = poisoned_copy(tensor, value);
  const auto st = io::TensorStore::open_file(path);
  try {
    io::check_finite(st);
    ADD_FAILURE() << tensor << " = " << value << " accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'" + tensor + "' element 1"), std::string::npos)
        << e.what();
  }
  fs::remove(path);
}

TEST(Finite, CheckpointWithNanOrInfIsRefusedByName) {
  EXPECT_NO_THROW(
      io::check_finite(io::TensorStore::open_dir(std::string(DSV3_TEST_DATA) + "/tiny-v3")));
  expect_refused("model.layers.1.mlp.gate.e_score_correction_bias", NAN);
  expect_refused("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", INFINITY);
  expect_refused("model.embed_tokens.weight", -INFINITY);
}

}  // namespace
