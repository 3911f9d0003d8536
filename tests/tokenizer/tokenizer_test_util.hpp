// Shared helpers of the tokenizer tests: paths of the reference data and of the real DeepSeek-V3
// tokenizer (fetched by scripts/setup.sh), loaded once per test binary.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "io/file.hpp"
#include "tokenizer/tokenizer.hpp"

namespace dsv3::tok::test {

inline std::string deepseek_v3_dir() {
  return std::string(DSV3_SOURCE_DIR) + "/data/tokenizers/deepseek-v3";
}
inline std::string golden_dir() {
  return std::string(DSV3_SOURCE_DIR) + "/tests/tokenizer/data";
}

// The DeepSeek-V3 tokenizer, or nullptr when scripts/setup.sh has not fetched it.
inline const Tokenizer* deepseek_v3() {
  static const std::unique_ptr<Tokenizer> t = [] {
    if (!std::filesystem::exists(deepseek_v3_dir() + "/tokenizer.json"))
      return std::unique_ptr<Tokenizer>();
    return std::make_unique<Tokenizer>(Tokenizer::load(deepseek_v3_dir()));
  }();
  return t.get();
}

#define DSV3_REQUIRE_DEEPSEEK_V3()                                                            \
  const ::dsv3::tok::Tokenizer* ds = ::dsv3::tok::test::deepseek_v3();                        \
  if (!ds)                                                                                    \
  GTEST_SKIP() << "DeepSeek-V3 tokenizer missing at " << ::dsv3::tok::test::deepseek_v3_dir() \
               << " (run scripts/setup.sh)"

inline nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(io::read_file(path));
}

}  // namespace dsv3::tok::test
