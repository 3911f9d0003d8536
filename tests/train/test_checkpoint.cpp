// Checkpoint tests (train/checkpoint.hpp): the streaming hash, Blob conversions, save/load round
// trip over every dtype, keep-last-K, and refusal of corrupt or partial checkpoints (flipped
// byte, truncated file, missing manifest or file, leftover temp dir) with a warning naming the
// checkpoint and a fall back to the previous one.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/checkpoint.hpp"
#include "train/temp_dir.hpp"

using namespace dsv3;
using namespace dsv3::train;
namespace fs = std::filesystem;

namespace {

struct TempDir : dsv3::train::testing::TempDir {
  TempDir() : dsv3::train::testing::TempDir("ckpt") {}
};

// A checkpoint with one tensor of each dtype; values depend on step and seed.
CheckpointData make_checkpoint(int64_t step, uint64_t seed) {
  Rng rng(seed + uint64_t(step));
  CheckpointData c;
  c.step = step;
  std::vector<float> w(37 * 5);
  for (auto& v : w) v = float(rng.normal());
  c.tensors["model.layers.0.mlp.gate.weight"] = Blob::of(DType::F32, {37, 5}, w.data());
  std::vector<uint16_t> bf(64);
  for (auto& v : bf) v = f32_to_bf16(float(rng.normal()));
  c.tensors["model.embed_tokens.weight"] = Blob::of(DType::BF16, {8, 8}, bf.data());
  std::vector<int32_t> i32{1, -2, 3, int32_t(step)};
  c.tensors["counts"] = Blob::of(DType::I32, {2, 2}, i32.data());
  auto st = rng.state();
  c.tensors["rng.state"] = Blob::of(DType::I64, {4}, st.data());
  std::vector<uint8_t> u8{0, 255, 7};
  c.tensors["flags"] = Blob::of(DType::U8, {3}, u8.data());
  c.tensors["empty"] = Blob::of(DType::F32, {0}, nullptr);
  c.meta = {{"config", {{"hidden_size", 64}}}, {"lr", 3e-4}, {"name", "unit"}};
  return c;
}

void expect_same(const CheckpointData& a, const CheckpointData& b) {
  EXPECT_EQ(a.step, b.step);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    auto it = b.tensors.find(name);
    ASSERT_NE(it, b.tensors.end()) << name;
    EXPECT_EQ(t.dtype, it->second.dtype) << name;
    EXPECT_EQ(t.shape, it->second.shape) << name;
    EXPECT_EQ(t.bytes, it->second.bytes) << name;
  }
  for (const auto& [k, v] : a.meta.items()) EXPECT_EQ(b.meta.at(k), v) << k;
  EXPECT_EQ(b.meta.at("step"), a.step);
}

void flip_byte(const std::string& path, size_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(at));
  char c;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(std::streamoff(at));
  f.write(&c, 1);
}

bool any_contains(const std::vector<std::string>& v, const std::string& s) {
  for (const auto& x : v)
    if (x.find(s) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(Checkpoint, HashIsStreamingAndSensitive) {
  const uint64_t seed = 5;
  std::printf("hash seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  std::vector<uint8_t> data(1000);
  for (auto& b : data) b = uint8_t(rng.below(256));
  uint64_t whole = hash64(data.data(), data.size());
  for (int trial = 0; trial < 20; ++trial) {
    Hasher64 h;
    size_t pos = 0;
    while (pos < data.size()) {
      size_t n = std::min(data.size() - pos, size_t(rng.below(20)));
      h.update(data.data() + pos, n);
      pos += n;
    }
    EXPECT_EQ(h.digest(), whole);
  }
  auto flipped = data;
  flipped[500] ^= 1;
  EXPECT_NE(hash64(flipped.data(), flipped.size()), whole);
  EXPECT_NE(hash64(data.data(), 999), whole);
  EXPECT_NE(hash64(data.data(), data.size(), 1), whole);
  uint8_t zeros[16] = {};
  EXPECT_NE(hash64(zeros, 8), hash64(zeros, 9));  // length matters even for zero bytes
  EXPECT_EQ(hex64(0xabcull), "0000000000000abc");
}

TEST(Checkpoint, BlobConversions) {
  std::vector<float> v{1.5f, -2.0f, 0.25f};
  EXPECT_EQ(Blob::f32(v).to_f32(), v);
  std::vector<uint16_t> bf{f32_to_bf16(1.5f), f32_to_bf16(-2.0f)};
  EXPECT_EQ(Blob::of(DType::BF16, {2}, bf.data()).to_f32(), (std::vector<float>{1.5f, -2.0f}));
  std::vector<int32_t> i{-1, 7};
  EXPECT_EQ(Blob::of(DType::I32, {2}, i.data()).to_i64(), (std::vector<int64_t>{-1, 7}));
  EXPECT_EQ(Blob::i64({1, 2, 3}).to_i64(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_THROW(Blob::i64({1}).to_f32("x"), Error);
  EXPECT_THROW(Blob::f32({1}).to_i64("x"), Error);
}

TEST(Checkpoint, SaveLoadRoundTrip) {
  TempDir t;
  EXPECT_FALSE(load_latest_checkpoint(t.str()).has_value());
  auto c = make_checkpoint(100, 1);
  save_checkpoint(t.str(), c, 3);
  fs::path dir = checkpoint_path(t.str(), 100);
  for (const char* f : {"tensors.safetensors", "meta.json", "manifest.json"})
    EXPECT_TRUE(fs::is_regular_file(dir / f)) << f;
  std::vector<std::string> warnings;
  auto loaded = load_latest_checkpoint(t.str(), &warnings);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(warnings.empty());
  expect_same(c, *loaded);
  expect_same(c, load_checkpoint(dir.string()));
  // Saving the same step again replaces it.
  auto c2 = make_checkpoint(100, 2);
  save_checkpoint(t.str(), c2, 3);
  expect_same(c2, *load_latest_checkpoint(t.str()));
  EXPECT_EQ(list_checkpoints(t.str()), (std::vector<int64_t>{100}));
}

TEST(Checkpoint, KeepsLastK) {
  TempDir t;
  for (int64_t s : {10, 20, 30, 40, 50}) save_checkpoint(t.str(), make_checkpoint(s, 0), 2);
  EXPECT_EQ(list_checkpoints(t.str()), (std::vector<int64_t>{40, 50}));
  save_checkpoint(t.str(), make_checkpoint(60, 0), 0);  // 0 keeps all
  EXPECT_EQ(list_checkpoints(t.str()), (std::vector<int64_t>{40, 50, 60}));
  // Steps sort numerically, not by name (step-100 after step-60).
  save_checkpoint(t.str(), make_checkpoint(100, 0), 2);
  EXPECT_EQ(list_checkpoints(t.str()), (std::vector<int64_t>{60, 100}));
  EXPECT_EQ(load_latest_checkpoint(t.str())->step, 100);
  for (auto& e : fs::directory_iterator(checkpoints_dir(t.str())))
    EXPECT_EQ(e.path().filename().string().rfind(".tmp", 0), std::string::npos) << e.path();
}

namespace {

// Saves steps 1 and 2, damages step 2 with `damage`, and expects step 1 back with a warning
// about step-2 containing `reason`.
void expect_fallback(const std::function<void(const fs::path&)>& damage,
                     const std::string& reason) {
  TempDir t;
  auto c1 = make_checkpoint(1, 3), c2 = make_checkpoint(2, 3);
  save_checkpoint(t.str(), c1, 5);
  save_checkpoint(t.str(), c2, 5);
  damage(checkpoint_path(t.str(), 2));
  std::vector<std::string> warnings;
  auto loaded = load_latest_checkpoint(t.str(), &warnings);
  ASSERT_TRUE(loaded.has_value());
  expect_same(c1, *loaded);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_TRUE(any_contains(warnings, "step-2")) << warnings[0];
  EXPECT_TRUE(any_contains(warnings, reason)) << warnings[0];
  EXPECT_TRUE(any_contains(warnings, "falling back to step-1")) << warnings[0];
  EXPECT_THROW(load_checkpoint(checkpoint_path(t.str(), 2)), Error);
}

}  // namespace

TEST(Checkpoint, FlippedByteInTensorsFallsBack) {
  expect_fallback([](const fs::path& d) { flip_byte((d / "tensors.safetensors").string(), 300); },
                  "checksum of tensors.safetensors");
}

TEST(Checkpoint, FlippedByteInMetaFallsBack) {
  expect_fallback([](const fs::path& d) { flip_byte((d / "meta.json").string(), 5); },
                  "checksum of meta.json");
}

TEST(Checkpoint, TruncatedFileFallsBack) {
  expect_fallback(
      [](const fs::path& d) {
        auto p = d / "tensors.safetensors";
        fs::resize_file(p, fs::file_size(p) / 2);
      },
      "truncated");
}

TEST(Checkpoint, MissingManifestFallsBack) {
  expect_fallback([](const fs::path& d) { fs::remove(d / "manifest.json"); },
                  "manifest.json is missing");
}

TEST(Checkpoint, MissingTensorsFallsBack) {
  expect_fallback([](const fs::path& d) { fs::remove(d / "tensors.safetensors"); },
                  "tensors.safetensors is missing");
}

TEST(Checkpoint, GarbledManifestFallsBack) {
  expect_fallback(
      [](const fs::path& d) { std::ofstream(d / "manifest.json") << "{\"format\": \"dsv3-chec"; },
      "not valid JSON");
}

TEST(Checkpoint, LeftoverTempDirIsRemoved) {
  TempDir t;
  auto c1 = make_checkpoint(1, 4);
  save_checkpoint(t.str(), c1, 5);
  // What kill -9 in the middle of save_checkpoint leaves behind.
  fs::path tmp = fs::path(checkpoints_dir(t.str())) / ".tmp-step-2-99999";
  fs::create_directories(tmp);
  std::ofstream(tmp / "tensors.safetensors") << "partial";
  std::vector<std::string> warnings;
  auto loaded = load_latest_checkpoint(t.str(), &warnings);
  ASSERT_TRUE(loaded.has_value());
  expect_same(c1, *loaded);
  EXPECT_TRUE(any_contains(warnings, "interrupted checkpoint write"));
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(list_checkpoints(t.str()), (std::vector<int64_t>{1}));
}

TEST(Checkpoint, AllCorruptGivesNothingWithWarnings) {
  TempDir t;
  save_checkpoint(t.str(), make_checkpoint(1, 0), 5);
  save_checkpoint(t.str(), make_checkpoint(2, 0), 5);
  for (int64_t s : {1, 2}) fs::remove(fs::path(checkpoint_path(t.str(), s)) / "meta.json");
  std::vector<std::string> warnings;
  EXPECT_FALSE(load_latest_checkpoint(t.str(), &warnings).has_value());
  EXPECT_EQ(warnings.size(), 2u);
  EXPECT_TRUE(any_contains(warnings, "none left"));
}

TEST(Checkpoint, MetaStepMustMatchDirectory) {
  TempDir t;
  save_checkpoint(t.str(), make_checkpoint(3, 0), 5);
  fs::rename(checkpoint_path(t.str(), 3), checkpoint_path(t.str(), 4));
  try {
    load_checkpoint(checkpoint_path(t.str(), 4));
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("says step 3"), std::string::npos) << e.what();
  }
}
