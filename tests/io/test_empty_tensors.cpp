// Empty tensors read as empty vectors without passing a null pointer to memcpy (undefined even
// for zero bytes; the sanitizer build and fuzz/fuzz_safetensors found it in to_f32 and
// read_i32). Fails under UBSan without the fix.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "io/safetensors.hpp"

namespace {

TEST(EmptyTensors, ReadAsEmpty) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("dsv3_empty_" + std::to_string(::getpid()) + ".safetensors"))
                               .string();
  dsv3::io::SafetensorsWriter w;
  w.add("f", dsv3::DType::F32, {0}, nullptr);
  w.add("i", dsv3::DType::I32, {3, 0}, nullptr);
  w.write(path);
  const auto st = dsv3::io::TensorStore::open_file(path);
  EXPECT_TRUE(dsv3::io::read_f32(st.get("f")).empty());
  EXPECT_TRUE(dsv3::io::read_i32(st.get("i")).empty());
  std::filesystem::remove(path);
}

}  // namespace
