// The latent KV cache's memory: its pages become resident only when sequences write them
// (core/zeroed_array.hpp), and a cache larger than the machine is refused when it is made.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/zeroed_array.hpp"
#include "model/config.hpp"
#include "model/model.hpp"

using namespace dsv3;

namespace {
// This process's resident set (VmRSS), bytes.
double rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) * 1024;
  return -1;
}
}  // namespace

TEST(ZeroedArray, ZerosMovesAndResidentOnlyWhereWritten) {
  const size_t n = size_t(512) << 20 >> 2;  // 512 MiB of floats
  const double before = rss_bytes();
  ASSERT_GT(before, 0);
  ZeroedArray<float> a(n);
  ASSERT_EQ(a.size(), n);
  EXPECT_LT(rss_bytes() - before, 64.0 * (1 << 20)) << "the zeros were written up front";
  // Reads see zeros; writing the first 128 MiB makes about that much resident.
  for (size_t i = 0; i < n; i += 1 << 20) EXPECT_EQ(a.data()[i], 0.0f) << i;
  const size_t w = size_t(128) << 20 >> 2;
  for (size_t i = 0; i < w; i += 1024) a.data()[i] = float(i);
  EXPECT_GT(rss_bytes() - before, 96.0 * (1 << 20));
  ZeroedArray<float> b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.size(), n);
  EXPECT_EQ(b.data()[1024], 1024.0f);
  EXPECT_EQ(b.data()[w + 1024], 0.0f);
  ZeroedArray<float> c;
  c = std::move(b);
  EXPECT_EQ(c.data()[2048], 2048.0f);
}

TEST(KVCacheMemory, LargerThanTheMachineIsRefusedWhenMade) {
  model::ModelConfig c;
  c.num_hidden_layers = 4;
  c.kv_lora_rank = 512;
  c.qk_rope_head_dim = 64;
  // 4 layers × 576 floats × 2^20 slots × 2^16 positions: about 590 TiB.
  try {
    model::KVCache k(c, int64_t(1) << 20, int64_t(1) << 16, false);
    FAIL() << "a cache of about 590 TiB was made";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("latent KV cache"), std::string::npos) << e.what();
  }
  // A cache that fits is made, and its zeros are not resident until written.
  const double before = rss_bytes();
  model::KVCache small(c, 64, 1024, false);  // 4 × 64 × 1024 × 576 × 4 bytes = 576 MiB
  EXPECT_LT(rss_bytes() - before, 64.0 * (1 << 20));
  EXPECT_EQ(small.layer(3).latent.data()[63 * 1024 * 512], 0.0f);
}
