// config.json parsing: the reference configs load with the documented values; inconsistent or
// unknown values are refused with an error naming the key.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/file.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

using namespace dsv3;
using namespace dsv3::model;
using nlohmann::json;

namespace {

json v3_json() {
  return json::parse(io::read_file(std::string(DSV3_TEST_DATA) + "/tiny-v3/config.json"));
}

void expect_error(const json& j, const std::string& needle) {
  try {
    parse_config(j.dump(), "cfg.json");
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
  }
}

TEST(Config, ReferenceConfigsLoad) {
  auto v3 = load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  EXPECT_EQ(v3.hidden_size, 256);
  EXPECT_EQ(*v3.q_lora_rank, 64);
  EXPECT_EQ(v3.topk_method, TopkMethod::NoauxTc);
  EXPECT_EQ(v3.scoring_func, ScoringFunc::Sigmoid);
  EXPECT_TRUE(v3.rope_scaling.yarn);
  EXPECT_EQ(v3.num_nextn_predict_layers, 1);
  EXPECT_FALSE(v3.is_moe_layer(0));
  EXPECT_TRUE(v3.is_moe_layer(1));
  // Reference figure "MLA softmax_scale used".
  EXPECT_NEAR(v3.softmax_scale(), 0.18713, 1e-5);
  auto v2 = load_config(std::string(DSV3_TEST_DATA) + "/tiny-v2lite/config.json");
  EXPECT_FALSE(v2.q_lora_rank.has_value());
  EXPECT_EQ(v2.scoring_func, ScoringFunc::Softmax);
  EXPECT_EQ(v2.topk_method, TopkMethod::Greedy);
  EXPECT_NEAR(v2.softmax_scale(), 0.174017, 1e-5);
}

TEST(Config, ParamTableMatchesCheckpointTensorCount) {
  // tiny-v3 stores 207 tensors (MTP layer included), tiny-v2lite 72.
  EXPECT_EQ(param_table(load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3")).size(), 207u);
  EXPECT_EQ(param_table(load_config(std::string(DSV3_TEST_DATA) + "/tiny-v2lite")).size(), 72u);
}

TEST(Config, BadValuesAreNamed) {
  auto j = v3_json();
  j["scoring_func"] = "relu";
  expect_error(j, "scoring_func 'relu'");
  j = v3_json();
  j["topk_method"] = "random";
  expect_error(j, "topk_method 'random'");
  j = v3_json();
  j["n_group"] = 3;
  expect_error(j, "not divisible by n_group");
  j = v3_json();
  j["topk_group"] = 5;
  expect_error(j, "topk_group");
  j = v3_json();
  j["num_experts_per_tok"] = 40;
  expect_error(j, "num_experts_per_tok");
  j = v3_json();
  j.erase("kv_lora_rank");
  expect_error(j, "missing required key 'kv_lora_rank'");
  j = v3_json();
  j["hidden_size"] = "big";
  expect_error(j, "'hidden_size' has the wrong type");
  j = v3_json();
  j["rope_scaling"]["type"] = "dynamic";
  expect_error(j, "rope_scaling type 'dynamic'");
  j = v3_json();
  j["qk_rope_head_dim"] = 15;
  expect_error(j, "qk_rope_head_dim must be even");
  j = v3_json();
  j["num_key_value_heads"] = 1;
  expect_error(j, "num_key_value_heads");
  j = v3_json();
  j["quantization_config"] = {{"quant_method", "awq"}};
  expect_error(j, "quant_method 'awq'");
  expect_error(json::array(), "not a JSON object");
  try {
    parse_config("{\"vocab_size\": 12,", "cfg.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad JSON"), std::string::npos);
  }
}

TEST(Config, RoundTripsThroughJson) {
  auto c = load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  auto back = parse_config(c.to_json().dump(), "roundtrip");
  EXPECT_EQ(back.to_json(), c.to_json());
}

}  // namespace
