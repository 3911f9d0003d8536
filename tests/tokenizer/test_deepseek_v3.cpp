// The real DeepSeek-V3 tokenizer against ids produced by independent implementations: the
// shared reference (tokenizers.js) and golden files made with HF tokenizers 0.23.2 (Rust, through
// its Node binding; see tests/tokenizer/data/README.md).
#include <gtest/gtest.h>

#include "tokenizer_test_util.hpp"

namespace dsv3::tok {
namespace {

using test::read_json;

TEST(DeepSeekV3, SharedReferenceEncodings) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  auto ref = read_json(std::string(DSV3_TEST_DATA) + "/tokenizer/deepseek_v3_encodings.json");
  ASSERT_GE(ref.size(), 20u);
  for (const auto& e : ref) {
    std::string text = e.at("text");
    auto want = e.at("ids").get<std::vector<int32_t>>();
    auto got = ds->encode(text);
    EXPECT_EQ(got, want) << "text: " << text;
    EXPECT_EQ(ds->decode(got), e.at("decoded").get<std::string>()) << "text: " << text;
  }
}

}  // namespace
}  // namespace dsv3::tok
