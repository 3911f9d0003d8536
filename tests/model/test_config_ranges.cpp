// config.json ranges and types (issue 12): integer keys must be JSON integers, every key in its
// valid range, null refused where the HF config has no null meaning, and every error names the
// file and the key.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/file.hpp"
#include "model/config.hpp"

using namespace dsv3;
using namespace dsv3::model;
using nlohmann::json;

namespace {

json v3_json() {
  return json::parse(io::read_file(std::string(DSV3_TEST_DATA) + "/tiny-v3/config.json"));
}

// Sets `key` to `value` in the tiny-v3 config and expects an error naming the file and the key.
void expect_refused(const std::string& key, const json& value) {
  json j = v3_json();
  j[key] = value;
  try {
    parse_config(j.dump(), "cfg.json");
    ADD_FAILURE() << key << " = " << value.dump() << " was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << key << ": " << msg;
    EXPECT_EQ(msg.find("json.exception"), std::string::npos) << msg;
  }
}

TEST(ConfigRanges, IntegerKeysMustBeIntegers) {
  for (const char* k : {"num_hidden_layers", "topk_group", "n_shared_experts", "hidden_size",
                        "vocab_size", "max_position_embeddings", "n_group", "q_lora_rank"})
    expect_refused(k, 2.9);
  expect_refused("topk_group", 1.5);
  expect_refused("n_shared_experts", 1.5);
  expect_refused("num_hidden_layers", true);
  expect_refused("num_hidden_layers", "2");
}

TEST(ConfigRanges, ValuesOutOfRangeAreRefused) {
  expect_refused("routed_scaling_factor", -1);
  expect_refused("routed_scaling_factor", 0);
  expect_refused("rms_norm_eps", 1.8e19);
  expect_refused("rms_norm_eps", 0);
  expect_refused("rope_theta", -5);
  expect_refused("max_position_embeddings", 1);  // one token leaves no next-token target
  expect_refused("max_position_embeddings", 0);
  expect_refused("vocab_size", (int64_t(1) << 32) + 1);  // token ids are int32
  expect_refused("hidden_size", -4);
  expect_refused("n_shared_experts", -1);
  expect_refused("num_nextn_predict_layers", -1);
  expect_refused("first_k_dense_replace", -1);
  expect_refused("moe_layer_freq", 0);
  expect_refused("aux_loss_alpha", -0.5);
  expect_refused("initializer_range", -0.02);
  expect_refused("eos_token_id", 100000);
  expect_refused("hidden_size", json::parse("18446744073709551615"));
}

TEST(ConfigRanges, NullIsRefusedExceptWhereItMeansSomething) {
  for (const char* k : {"rope_theta", "hidden_act", "scoring_func", "topk_method", "hidden_size",
                        "n_group", "norm_topk_prob", "rms_norm_eps"})
    expect_refused(k, nullptr);
  json j = v3_json();
  j["q_lora_rank"] = nullptr;  // V2-Lite: a direct q_proj
  j["rope_scaling"] = nullptr;
  EXPECT_FALSE(parse_config(j.dump(), "cfg.json").q_lora_rank.has_value());
}

TEST(ConfigRanges, WrongTypesNameFileAndKey) {
  expect_refused("hidden_act", 5);
  expect_refused("scoring_func", 1);
  expect_refused("norm_topk_prob", 1);
  expect_refused("rope_theta", "big");
  json j = v3_json();
  j["rope_scaling"]["factor"] = "x";
  try {
    parse_config(j.dump(), "cfg.json");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_scaling.factor"), std::string::npos) << e.what();
  }
  j = v3_json();
  j["rope_scaling"]["beta_fast"] = nullptr;
  EXPECT_THROW(parse_config(j.dump(), "cfg.json"), Error);
  j = v3_json();
  j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {"a", 1}}};
  try {
    parse_config(j.dump(), "cfg.json");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight_block_size"), std::string::npos) << e.what();
  }
}

TEST(ConfigRanges, ReleasedValuesStillLoad) {
  json j = v3_json();
  j["max_position_embeddings"] = 2;
  j["vocab_size"] = 129280;
  j["routed_scaling_factor"] = 2.5;
  j["rope_theta"] = 10000;  // an integer where a float is expected is fine
  EXPECT_EQ(parse_config(j.dump(), "cfg.json").max_position_embeddings, 2);
}

}  // namespace
