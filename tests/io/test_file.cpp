// io::MappedFile in both residencies: the huge-page copy holds exactly the file's bytes (sizes
// around the 2 MiB rounding included), an empty file and a missing one behave as with mmap, and a
// safetensors file opened either way gives the same tensors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "io/safetensors.hpp"

using namespace dsv3;
namespace fs = std::filesystem;

namespace {
std::string temp_dir() {
  const fs::path d = fs::temp_directory_path() / ("dsv3-test-file-" + std::to_string(getpid()));
  fs::create_directories(d);
  return d.string();
}
}  // namespace

TEST(MappedFile, HugePageCopyHoldsTheSameBytes) {
  const uint64_t seed = 3;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  const std::string dir = temp_dir();
  for (size_t size : {size_t(1), size_t(4095), (size_t(2) << 20) - 1, size_t(2) << 20,
                      (size_t(2) << 20) + 1, size_t(5'000'000)}) {
    std::string bytes(size, '\0');
    for (auto& c : bytes) c = char(rng.next_u64());
    const std::string path = dir + "/f" + std::to_string(size);
    io::atomic_write(path, bytes);
    auto a = io::MappedFile::open(path, io::Residency::Map);
    auto b = io::MappedFile::open(path, io::Residency::HugePageCopy);
    ASSERT_EQ(a->size(), size);
    ASSERT_EQ(b->size(), size);
    EXPECT_EQ(std::memcmp(a->data(), bytes.data(), size), 0) << size;
    EXPECT_EQ(std::memcmp(b->data(), bytes.data(), size), 0) << size;
    EXPECT_NE(a->data(), b->data());
    // The copy starts on a 2 MiB boundary so it can be backed by huge pages.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % (uintptr_t(2) << 20), 0u) << size;
    // Or so that a chosen byte (a safetensors data section) starts a 4 KiB page.
    for (size_t at : {size_t(8), size_t(4095), size_t(4096), size_t(100'003)}) {
      auto c = io::MappedFile::open(path, io::Residency::HugePageCopy, at);
      ASSERT_EQ(c->size(), size);
      EXPECT_EQ(std::memcmp(c->data(), bytes.data(), size), 0) << size << " at " << at;
      EXPECT_EQ((reinterpret_cast<uintptr_t>(c->data()) + at) % io::MappedFile::kCopyAlign, 0u)
          << size << " at " << at;
    }
  }
  fs::remove_all(dir);
}

TEST(MappedFile, EmptyAndMissingFiles) {
  const std::string dir = temp_dir();
  io::atomic_write(dir + "/empty", std::string());
  for (auto r : {io::Residency::Map, io::Residency::HugePageCopy}) {
    auto m = io::MappedFile::open(dir + "/empty", r);
    EXPECT_EQ(m->size(), 0u);
    try {
      io::MappedFile::open(dir + "/missing", r);
      ADD_FAILURE() << "opened a missing file";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
}

TEST(MappedFile, SafetensorsReadTheSameEitherWay) {
  const std::string dir = temp_dir();
  const std::string path = dir + "/t.safetensors";
  std::vector<float> v(3000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f - 7.0f;
  io::SafetensorsWriter w;
  w.add("x", DType::F32, {30, 100}, v.data());
  w.add("y", DType::F32, {7}, v.data() + 5);
  w.write(path);
  auto a = io::TensorStore::open_file(path, io::Residency::Map);
  auto b = io::TensorStore::open_file(path, io::Residency::HugePageCopy);
  for (const char* name : {"x", "y"}) {
    const auto& ta = a.get(name);
    const auto& tb = b.get(name);
    EXPECT_EQ(ta.shape, tb.shape);
    ASSERT_EQ(ta.nbytes, tb.nbytes);
    EXPECT_EQ(std::memcmp(ta.data, tb.data, ta.nbytes), 0);
  }
  EXPECT_EQ(std::memcmp(b.get("x").data, v.data(), b.get("x").nbytes), 0);
  EXPECT_EQ(std::memcmp(b.get("y").data, v.data() + 5, b.get("y").nbytes), 0);
  // The copy's data section starts a page, so the first tensor (offset 0) is page-aligned
  // whatever the header length.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.get("x").data) % io::MappedFile::kCopyAlign, 0u);
  fs::remove_all(dir);
}

TEST(MappedFile, CopyOnlyWhenItFitsInHalfTheMemory) {
  using io::Residency;
  EXPECT_EQ(io::residency_for(Residency::HugePageCopy, 1 << 20), Residency::HugePageCopy);
  EXPECT_EQ(io::residency_for(Residency::HugePageCopy, uint64_t(1) << 60), Residency::Map);
  EXPECT_EQ(io::residency_for(Residency::Map, 1 << 20), Residency::Map);
}
