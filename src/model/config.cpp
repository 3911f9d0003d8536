// config.json parsing and validation for DeepSeek-V2/V3 (HF DeepseekV2Config/DeepseekV3Config).
#include "model/config.hpp"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/file.hpp"

namespace dsv3::model {

using nlohmann::json;

bool ModelConfig::is_moe_layer(int64_t layer) const {
  return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

namespace {
double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// Keys that exist in released configs but do not change the computation done here.
const std::set<std::string> kIgnoredKeys = {"architectures",
                                            "attention_dropout",
                                            "auto_map",
                                            "ep_size",
                                            "pretraining_tp",
                                            "use_cache",
                                            "transformers_version",
                                            "_name_or_path",
                                            "num_key_value_heads",
                                            "hidden_act",
                                            "attention_bias",
                                            "pad_token_id",
                                            "rope_interleave",
                                            "head_dim",
                                            "torch_dtype",
                                            "quantization_config",
                                            "model_type",
                                            "rope_scaling",
                                            "dtype",
                                            "topk_method",
                                            "scoring_func"};

template <typename T>
T get_req(const json& j, const char* key, const std::string& where) {
  DSV3_CHECK(j.contains(key) && !j[key].is_null(), "{}: missing required key '{}'", where, key);
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    DSV3_FAIL("{}: key '{}' has the wrong type ({})", where, key, j[key].dump());
  }
}

template <typename T>
T get_opt(const json& j, const char* key, T dflt, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    DSV3_FAIL("{}: key '{}' has the wrong type ({})", where, key, j[key].dump());
  }
}
}  // namespace

double ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling.yarn && rope_scaling.mscale_all_dim != 0) {
    double m = yarn_get_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

void ModelConfig::validate(const std::string& w) const {
  auto pos = [&](int64_t v, const char* k) {
    DSV3_CHECK(v > 0, "{}: '{}' must be > 0, got {}", w, k, v);
  };
  pos(vocab_size, "vocab_size");
  pos(hidden_size, "hidden_size");
  pos(num_hidden_layers, "num_hidden_layers");
  pos(num_attention_heads, "num_attention_heads");
  pos(kv_lora_rank, "kv_lora_rank");
  pos(qk_nope_head_dim, "qk_nope_head_dim");
  pos(qk_rope_head_dim, "qk_rope_head_dim");
  pos(v_head_dim, "v_head_dim");
  DSV3_CHECK(qk_rope_head_dim % 2 == 0, "{}: qk_rope_head_dim must be even, got {}", w,
             qk_rope_head_dim);
  if (q_lora_rank) pos(*q_lora_rank, "q_lora_rank");
  if (first_k_dense_replace > 0 || n_routed_experts == 0)
    pos(intermediate_size, "intermediate_size");
  DSV3_CHECK(first_k_dense_replace >= 0, "{}: 'first_k_dense_replace' must be >= 0", w);
  if (n_routed_experts > 0) {
    pos(moe_intermediate_size, "moe_intermediate_size");
    pos(num_experts_per_tok, "num_experts_per_tok");
    pos(moe_layer_freq, "moe_layer_freq");
    DSV3_CHECK(n_shared_experts >= 0, "{}: 'n_shared_experts' must be >= 0", w);
    DSV3_CHECK(num_experts_per_tok <= n_routed_experts,
               "{}: num_experts_per_tok ({}) exceeds n_routed_experts ({})", w, num_experts_per_tok,
               n_routed_experts);
    pos(n_group, "n_group");
    DSV3_CHECK(n_routed_experts % n_group == 0,
               "{}: n_routed_experts ({}) is not divisible by n_group ({})", w, n_routed_experts,
               n_group);
    DSV3_CHECK(topk_group >= 1 && topk_group <= n_group,
               "{}: topk_group ({}) must be in [1, n_group = {}]", w, topk_group, n_group);
    int64_t per_group = n_routed_experts / n_group;
    DSV3_CHECK(num_experts_per_tok <= topk_group * per_group,
               "{}: num_experts_per_tok ({}) exceeds the experts in topk_group groups ({})", w,
               num_experts_per_tok, topk_group * per_group);
    if (topk_method == TopkMethod::NoauxTc && n_group > 1)
      DSV3_CHECK(per_group >= 2, "{}: noaux_tc group scores need >= 2 experts per group", w);
  }
  DSV3_CHECK(rms_norm_eps > 0, "{}: 'rms_norm_eps' must be > 0", w);
  DSV3_CHECK(rope_theta > 0, "{}: 'rope_theta' must be > 0", w);
  pos(max_position_embeddings, "max_position_embeddings");
  if (rope_scaling.yarn) {
    DSV3_CHECK(rope_scaling.factor >= 1, "{}: rope_scaling.factor must be >= 1", w);
    pos(rope_scaling.original_max_position_embeddings,
        "rope_scaling.original_max_position_embeddings");
  }
  DSV3_CHECK(num_nextn_predict_layers >= 0, "{}: 'num_nextn_predict_layers' must be >= 0", w);
  DSV3_CHECK(bos_token_id >= 0 && bos_token_id < vocab_size, "{}: bos_token_id out of range", w);
  DSV3_CHECK(eos_token_id >= 0 && eos_token_id < vocab_size, "{}: eos_token_id out of range", w);
}

ModelConfig parse_config(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    DSV3_FAIL("{}: bad JSON: {}", where, e.what());
  }
  DSV3_CHECK(j.is_object(), "{}: config is not a JSON object", where);
  ModelConfig c;
  c.model_type = get_opt<std::string>(j, "model_type", "deepseek_v3", where);
  DSV3_CHECK(c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2",
             "{}: model_type '{}' is not supported (deepseek_v3 or deepseek_v2)", where,
             c.model_type);
  std::string act = get_opt<std::string>(j, "hidden_act", "silu", where);
  DSV3_CHECK(act == "silu", "{}: hidden_act '{}' is not supported (silu)", where, act);
  DSV3_CHECK(!get_opt<bool>(j, "attention_bias", false, where),
             "{}: attention_bias true is not supported by DeepSeek MLA", where);

  c.vocab_size = get_req<int64_t>(j, "vocab_size", where);
  c.hidden_size = get_req<int64_t>(j, "hidden_size", where);
  c.intermediate_size = get_opt<int64_t>(j, "intermediate_size", 0, where);
  c.moe_intermediate_size = get_opt<int64_t>(j, "moe_intermediate_size", 0, where);
  c.num_hidden_layers = get_req<int64_t>(j, "num_hidden_layers", where);
  c.num_attention_heads = get_req<int64_t>(j, "num_attention_heads", where);
  int64_t kvh = get_opt<int64_t>(j, "num_key_value_heads", c.num_attention_heads, where);
  DSV3_CHECK(kvh == c.num_attention_heads,
             "{}: num_key_value_heads ({}) must equal num_attention_heads ({}) for MLA", where, kvh,
             c.num_attention_heads);
  if (j.contains("q_lora_rank") && !j["q_lora_rank"].is_null())
    c.q_lora_rank = get_req<int64_t>(j, "q_lora_rank", where);
  c.kv_lora_rank = get_req<int64_t>(j, "kv_lora_rank", where);
  c.qk_nope_head_dim = get_req<int64_t>(j, "qk_nope_head_dim", where);
  c.qk_rope_head_dim = get_req<int64_t>(j, "qk_rope_head_dim", where);
  c.v_head_dim = get_req<int64_t>(j, "v_head_dim", where);
  c.n_routed_experts = get_opt<int64_t>(j, "n_routed_experts", 0, where);
  c.n_shared_experts = get_opt<int64_t>(j, "n_shared_experts", 0, where);
  c.num_experts_per_tok = get_opt<int64_t>(j, "num_experts_per_tok", 0, where);
  c.n_group = get_opt<int64_t>(j, "n_group", 1, where);
  c.topk_group = get_opt<int64_t>(j, "topk_group", 1, where);
  std::string tm = get_opt<std::string>(
      j, "topk_method", c.model_type == "deepseek_v3" ? "noaux_tc" : "greedy", where);
  if (tm == "noaux_tc")
    c.topk_method = TopkMethod::NoauxTc;
  else if (tm == "greedy")
    c.topk_method = TopkMethod::Greedy;
  else if (tm == "group_limited_greedy")
    c.topk_method = TopkMethod::GroupLimitedGreedy;
  else
    DSV3_FAIL("{}: topk_method '{}' is not one of noaux_tc, greedy, group_limited_greedy", where,
              tm);
  std::string sf = get_opt<std::string>(
      j, "scoring_func", c.model_type == "deepseek_v3" ? "sigmoid" : "softmax", where);
  if (sf == "sigmoid")
    c.scoring_func = ScoringFunc::Sigmoid;
  else if (sf == "softmax")
    c.scoring_func = ScoringFunc::Softmax;
  else
    DSV3_FAIL("{}: scoring_func '{}' is not one of sigmoid, softmax", where, sf);
  c.norm_topk_prob =
      get_opt<bool>(j, "norm_topk_prob", c.scoring_func == ScoringFunc::Sigmoid, where);
  c.routed_scaling_factor = get_opt<double>(j, "routed_scaling_factor", 1.0, where);
  c.first_k_dense_replace = get_opt<int64_t>(j, "first_k_dense_replace", 0, where);
  c.moe_layer_freq = get_opt<int64_t>(j, "moe_layer_freq", 1, where);
  c.rope_theta = get_opt<double>(j, "rope_theta", 10000.0, where);
  c.rms_norm_eps = get_opt<double>(j, "rms_norm_eps", 1e-6, where);
  c.max_position_embeddings = get_opt<int64_t>(j, "max_position_embeddings", 4096, where);
  c.num_nextn_predict_layers = get_opt<int64_t>(j, "num_nextn_predict_layers", 0, where);
  c.tie_word_embeddings = get_opt<bool>(j, "tie_word_embeddings", false, where);
  c.bos_token_id = get_opt<int64_t>(j, "bos_token_id", 0, where);
  c.eos_token_id = get_opt<int64_t>(j, "eos_token_id", 1, where);
  c.aux_loss_alpha = get_opt<double>(j, "aux_loss_alpha", 0.001, where);
  c.seq_aux = get_opt<bool>(j, "seq_aux", true, where);
  c.initializer_range = get_opt<double>(j, "initializer_range", 0.02, where);
  c.torch_dtype = get_opt<std::string>(j, "torch_dtype", "bfloat16", where);

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& r = j["rope_scaling"];
    DSV3_CHECK(r.is_object(), "{}: rope_scaling must be an object or null", where);
    std::string type = r.contains("type") ? get_req<std::string>(r, "type", where)
                                          : get_opt<std::string>(r, "rope_type", "", where);
    DSV3_CHECK(type == "yarn", "{}: rope_scaling type '{}' is not supported (yarn)", where, type);
    c.rope_scaling.yarn = true;
    c.rope_scaling.factor = get_req<double>(r, "factor", where + " rope_scaling");
    c.rope_scaling.original_max_position_embeddings =
        get_req<int64_t>(r, "original_max_position_embeddings", where + " rope_scaling");
    c.rope_scaling.beta_fast = get_opt<double>(r, "beta_fast", 32, where);
    c.rope_scaling.beta_slow = get_opt<double>(r, "beta_slow", 1, where);
    c.rope_scaling.mscale = get_opt<double>(r, "mscale", 1, where);
    c.rope_scaling.mscale_all_dim = get_opt<double>(r, "mscale_all_dim", 0, where);
  }
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    std::string qm = get_opt<std::string>(q, "quant_method", "", where);
    DSV3_CHECK(qm == "fp8", "{}: quantization_config.quant_method '{}' is not supported (fp8)",
               where, qm);
    c.quantization.enabled = true;
    c.quantization.fmt = get_opt<std::string>(q, "fmt", "e4m3", where);
    DSV3_CHECK(c.quantization.fmt == "e4m3", "{}: quantization fmt '{}' is not supported (e4m3)",
               where, c.quantization.fmt);
    auto bs = get_opt<std::vector<int64_t>>(q, "weight_block_size", {128, 128}, where);
    DSV3_CHECK(bs.size() == 2 && bs[0] == 128 && bs[1] == 128,
               "{}: weight_block_size must be [128, 128]", where);
  }
  static const std::set<std::string> known = {"vocab_size",
                                              "hidden_size",
                                              "intermediate_size",
                                              "moe_intermediate_size",
                                              "num_hidden_layers",
                                              "num_attention_heads",
                                              "q_lora_rank",
                                              "kv_lora_rank",
                                              "qk_nope_head_dim",
                                              "qk_rope_head_dim",
                                              "v_head_dim",
                                              "n_routed_experts",
                                              "n_shared_experts",
                                              "num_experts_per_tok",
                                              "n_group",
                                              "topk_group",
                                              "norm_topk_prob",
                                              "routed_scaling_factor",
                                              "first_k_dense_replace",
                                              "moe_layer_freq",
                                              "rope_theta",
                                              "rms_norm_eps",
                                              "max_position_embeddings",
                                              "num_nextn_predict_layers",
                                              "tie_word_embeddings",
                                              "bos_token_id",
                                              "eos_token_id",
                                              "aux_loss_alpha",
                                              "seq_aux",
                                              "initializer_range"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key()) && !kIgnoredKeys.count(it.key()))
      log_warn(where + ": unknown key '" + it.key() + "' ignored");
  DSV3_CHECK(!c.tie_word_embeddings, "{}: tie_word_embeddings true is not supported", where);
  c.validate(where);
  return c;
}

ModelConfig load_config(const std::string& path) {
  std::string p = std::filesystem::is_directory(path) ? path + "/config.json" : path;
  return parse_config(io::read_file(p), p);
}

json ModelConfig::to_json() const {
  json j;
  bool v3 = model_type == "deepseek_v3";
  j["architectures"] = {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_attention_heads;
  j["q_lora_rank"] = q_lora_rank ? json(*q_lora_rank) : json(nullptr);
  j["kv_lora_rank"] = kv_lora_rank;
  j["qk_nope_head_dim"] = qk_nope_head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["v_head_dim"] = v_head_dim;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["n_group"] = n_group;
  j["topk_group"] = topk_group;
  j["topk_method"] = topk_method == TopkMethod::NoauxTc  ? "noaux_tc"
                     : topk_method == TopkMethod::Greedy ? "greedy"
                                                         : "group_limited_greedy";
  j["scoring_func"] = scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax";
  j["norm_topk_prob"] = norm_topk_prob;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["first_k_dense_replace"] = first_k_dense_replace;
  j["moe_layer_freq"] = moe_layer_freq;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["max_position_embeddings"] = max_position_embeddings;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["aux_loss_alpha"] = aux_loss_alpha;
  j["seq_aux"] = seq_aux;
  j["initializer_range"] = initializer_range;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["torch_dtype"] = torch_dtype;
  if (rope_scaling.yarn)
    j["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", rope_scaling.factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
        {"beta_fast", rope_scaling.beta_fast},
        {"beta_slow", rope_scaling.beta_slow},
        {"mscale", rope_scaling.mscale},
        {"mscale_all_dim", rope_scaling.mscale_all_dim}};
  else
    j["rope_scaling"] = nullptr;
  if (quantization.enabled)
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  return j;
}

void save_config(const ModelConfig& c, const std::string& path) {
  io::atomic_write(path, c.to_json().dump(2) + "\n");
}

}  // namespace dsv3::model
