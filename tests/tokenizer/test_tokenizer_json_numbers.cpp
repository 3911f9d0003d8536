// Numbers of tokenizer.json / tokenizer_config.json (fuzz/fuzz_tokenizer_json found a float vocab
// id of 1.8e106 cast to int64, undefined behaviour): ids must be JSON integers in range, and
// model_max_length 1e30 ("no limit" in released configs) saturates.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/file.hpp"
#include "tokenizer/tokenizer.hpp"

using nlohmann::json;

namespace {

json small_tokenizer() {
  return json::parse(dsv3::io::read_file(std::string(DSV3_SOURCE_DIR) +
                                         "/fuzz/seeds/tokenizer_json/gpt2_prefix_space.json"));
}

void expect_refused(const json& j, const std::string& needle) {
  try {
    dsv3::tok::Tokenizer::from_json(j.dump());
    ADD_FAILURE() << "accepted; expected an error with '" << needle << "'";
  } catch (const dsv3::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerJsonNumbers, IdsMustBeIntegersInRange) {
  EXPECT_NO_THROW(dsv3::tok::Tokenizer::from_json(small_tokenizer().dump()));
  json j = small_tokenizer();
  j["model"]["vocab"]["a"] = json::parse("1.7777777777777777e106");
  expect_refused(j, "vocab id");
  j = small_tokenizer();
  j["model"]["vocab"]["a"] = 12.5;
  expect_refused(j, "is not an integer");
  for (const json& id : {json(1.5), json(-1), json(int64_t(1) << 40), json("7")}) {
    j = small_tokenizer();
    j["added_tokens"] = json::array({{{"id", id},
                                      {"content", "<x>"},
                                      {"special", true},
                                      {"single_word", false},
                                      {"lstrip", false},
                                      {"rstrip", false},
                                      {"normalized", false}}});
    expect_refused(j, "added token '<x>' has id");
  }
}

TEST(TokenizerJsonNumbers, SparseIdsCannotAskForGigabytes) {
  json j = small_tokenizer();
  j["model"]["vocab"]["a"] = 444444479;  // a dense id table of 14 GB
  expect_refused(j, "vocab id 444444479 is far beyond");
}

TEST(TokenizerJsonNumbers, HugeModelMaxLengthSaturates) {
  const json cfg = {{"model_max_length", 1e30}};
  const auto t = dsv3::tok::Tokenizer::from_json(small_tokenizer().dump(), cfg.dump());
  EXPECT_EQ(t.config().model_max_length, INT64_MAX);
}

}  // namespace
