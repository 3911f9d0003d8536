// Bit-exactness against Hugging Face tokenizers 0.23.2 (golden files made by
// data/make_golden.js): the DeepSeek-V3 tokenizer on hand-written hard cases and 400 seeded
// random texts, invalid UTF-8, decoding of arbitrary id sequences, and small tokenizers that
// exercise the other supported components (Split behaviours, Digits, ByteLevel options,
// normalizers, added-token options, TemplateProcessing, ignore_merges).
#include <gtest/gtest.h>

#include "tokenizer_test_util.hpp"

namespace dsv3::tok {
namespace {

using test::golden_dir;
using test::read_json;

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

void check_cases(const Tokenizer& t, const nlohmann::json& cases, const std::string& what) {
  for (const auto& c : cases) {
    std::string text = c.at("text");
    auto ids = t.encode(text);
    EXPECT_EQ(ids, c.at("ids").get<std::vector<int32_t>>()) << what << " text: '" << text << "'";
    EXPECT_EQ(t.encode(text, true), c.at("ids_special").get<std::vector<int32_t>>())
        << what << " (add_special_tokens) text: '" << text << "'";
    EXPECT_EQ(t.decode(ids), c.at("decoded").get<std::string>())
        << what << " text: '" << text << "'";
    EXPECT_EQ(t.decode(ids, true), c.at("decoded_skip").get<std::string>())
        << what << " (skip special) text: '" << text << "'";
  }
}

TEST(HfGolden, DeepSeekV3Cases) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  auto g = read_json(golden_dir() + "/deepseek_v3_hf_cases.json");
  ASSERT_GE(g.at("cases").size(), 400u);
  // add_special_tokens: HF's own post-processor (ByteLevel) adds nothing; transformers adds BOS.
  // The golden ids_special come from HF tokenizers alone, so compare against a tokenizer loaded
  // without tokenizer_config.json.
  Tokenizer raw = Tokenizer::from_json(io::read_file(test::deepseek_v3_dir() + "/tokenizer.json"));
  check_cases(raw, g.at("cases"), "deepseek-v3");
  for (const auto& c : g.at("cases")) {
    std::string text = c.at("text");
    auto want = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(ds->encode(text), want);
    want.insert(want.begin(), 0);  // <｜begin▁of▁sentence｜>
    EXPECT_EQ(ds->encode(text, true), want) << "text: '" << text << "'";
  }
}

TEST(HfGolden, DeepSeekV3LongText) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  auto g = read_json(golden_dir() + "/deepseek_v3_hf_cases.json");
  const auto& c = g.at("long");
  std::string text = c.at("text");
  auto ids = ds->encode(text);
  EXPECT_EQ(ids, c.at("ids").get<std::vector<int32_t>>());
  EXPECT_EQ(ds->decode(ids), text);
}

TEST(HfGolden, DeepSeekV3InvalidUtf8IsEncodedAsItsLossyConversion) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  auto g = read_json(golden_dir() + "/deepseek_v3_hf_cases.json");
  ASSERT_GE(g.at("invalid_utf8").size(), 60u);
  for (const auto& c : g.at("invalid_utf8")) {
    std::string bytes = from_hex(c.at("bytes_hex"));
    EXPECT_EQ(ds->encode(bytes), c.at("ids").get<std::vector<int32_t>>())
        << "bytes: " << c.at("bytes_hex").get<std::string>();
  }
}

TEST(HfGolden, DeepSeekV3DecodeArbitraryIds) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  auto g = read_json(golden_dir() + "/deepseek_v3_hf_cases.json");
  ASSERT_GE(g.at("decode").size(), 200u);
  for (const auto& c : g.at("decode")) {
    auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(ds->decode(ids), c.at("text").get<std::string>()) << c.at("ids").dump();
    EXPECT_EQ(ds->decode(ids, true), c.at("text_skip").get<std::string>()) << c.at("ids").dump();
  }
}

TEST(HfGolden, ComponentVariants) {
  auto g = read_json(golden_dir() + "/variants_hf_cases.json");
  ASSERT_GE(g.at("variants").size(), 14u);
  for (const auto& [name, v] : g.at("variants").items()) {
    SCOPED_TRACE(name);
    Tokenizer t = Tokenizer::from_json(v.at("tokenizer").dump());
    check_cases(t, v.at("cases"), name);
  }
}

}  // namespace
}  // namespace dsv3::tok
