// config.json parsing and validation for DeepSeek-V2/V3 (HF DeepseekV2Config/DeepseekV3Config).
#include "model/config.hpp"

#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <type_traits>

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

// Typed access to a config key. Absent keys take the default (none: the key is required); a
// present null is refused, since HF configs use null only where it has a meaning (q_lora_rank,
// rope_scaling, quantization_config, checked by the callers). `name` is the key as the user
// wrote it (rope_scaling.factor), so every error names the file and the key.
const json* find_value(const json& j, const std::string& key, const std::string& name,
                       const char* expected, const std::string& where) {
  if (!j.contains(key)) return nullptr;
  const json& v = j[key];
  DSV3_CHECK(!v.is_null(), "{}: '{}' is null, expected {}", where, name, expected);
  return &v;
}

template <typename T>
T get_value(const json& j, const std::string& key, std::optional<T> dflt, const std::string& where,
            const std::string& prefix = "") {
  const std::string name = prefix + key;
  const char* expected = std::is_same_v<T, int64_t>       ? "an integer"
                         : std::is_same_v<T, double>      ? "a number"
                         : std::is_same_v<T, bool>        ? "true or false"
                         : std::is_same_v<T, std::string> ? "a string"
                                                          : "a value";
  const json* v = find_value(j, key, name, expected, where);
  if (!v) {
    DSV3_CHECK(dflt, "{}: missing required key '{}'", where, name);
    return *dflt;
  }
  bool ok = false;
  if constexpr (std::is_same_v<T, int64_t>)
    ok = v->is_number_integer() &&
         (!v->is_number_unsigned() || v->get<uint64_t>() <= uint64_t(INT64_MAX));
  else if constexpr (std::is_same_v<T, double>)
    ok = v->is_number() && std::isfinite(v->get<double>());
  else if constexpr (std::is_same_v<T, bool>)
    ok = v->is_boolean();
  else
    ok = v->is_string();
  DSV3_CHECK(ok, "{}: '{}' has the wrong type: expected {}, got {}", where, name, expected,
             v->dump());
  return v->get<T>();
}

int64_t get_int(const json& j, const std::string& key, std::optional<int64_t> dflt,
                const std::string& where, const std::string& prefix = "") {
  return get_value<int64_t>(j, key, dflt, where, prefix);
}
double get_num(const json& j, const std::string& key, std::optional<double> dflt,
               const std::string& where, const std::string& prefix = "") {
  return get_value<double>(j, key, dflt, where, prefix);
}
bool get_bool(const json& j, const std::string& key, std::optional<bool> dflt,
              const std::string& where) {
  return get_value<bool>(j, key, dflt, where);
}
std::string get_str(const json& j, const std::string& key, std::optional<std::string> dflt,
                    const std::string& where, const std::string& prefix = "") {
  return get_value<std::string>(j, key, std::move(dflt), where, prefix);
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
  // Sizes fit int32 (token ids and kernel indices are 32-bit); whether a model of these sizes
  // fits in memory is checked where it is allocated (model/footprint.hpp).
  constexpr int64_t kMaxSize = INT32_MAX;
  auto in_range = [&](int64_t v, const char* k, int64_t lo, int64_t hi) {
    DSV3_CHECK(v >= lo && v <= hi, "{}: '{}' must be in [{}, {}], got {}", w, k, lo, hi, v);
  };
  auto pos = [&](int64_t v, const char* k) { in_range(v, k, 1, kMaxSize); };
  auto finite = [&](double v, const char* k, double lo, double hi, bool open_lo) {
    DSV3_CHECK(std::isfinite(v) && (open_lo ? v > lo : v >= lo) && v <= hi,
               "{}: '{}' must be in {}{}, {}], got {}", w, k, open_lo ? "(" : "[", lo, hi, v);
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
  in_range(intermediate_size, "intermediate_size", 0, kMaxSize);
  in_range(moe_intermediate_size, "moe_intermediate_size", 0, kMaxSize);
  if (first_k_dense_replace > 0 || n_routed_experts == 0)
    pos(intermediate_size, "intermediate_size");
  in_range(first_k_dense_replace, "first_k_dense_replace", 0, kMaxSize);
  in_range(n_routed_experts, "n_routed_experts", 0, kMaxSize);
  in_range(n_shared_experts, "n_shared_experts", 0, kMaxSize);
  in_range(num_experts_per_tok, "num_experts_per_tok", 0, kMaxSize);
  pos(moe_layer_freq, "moe_layer_freq");
  pos(n_group, "n_group");
  pos(topk_group, "topk_group");
  if (n_routed_experts > 0) {
    pos(moe_intermediate_size, "moe_intermediate_size");
    pos(num_experts_per_tok, "num_experts_per_tok");
    DSV3_CHECK(num_experts_per_tok <= n_routed_experts,
               "{}: num_experts_per_tok ({}) exceeds n_routed_experts ({})", w, num_experts_per_tok,
               n_routed_experts);
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
  finite(routed_scaling_factor, "routed_scaling_factor", 0, 1e6, true);
  finite(rms_norm_eps, "rms_norm_eps", 0, 1, true);
  finite(rope_theta, "rope_theta", 0, 1e30, true);
  finite(aux_loss_alpha, "aux_loss_alpha", 0, 1e6, false);
  finite(initializer_range, "initializer_range", 0, 1e6, false);
  // A window needs one input token and its next-token target (eval divides by T - 1).
  in_range(max_position_embeddings, "max_position_embeddings", 2, kMaxSize);
  if (rope_scaling.yarn) {
    finite(rope_scaling.factor, "rope_scaling.factor", 1, 1e6, false);
    pos(rope_scaling.original_max_position_embeddings,
        "rope_scaling.original_max_position_embeddings");
    finite(rope_scaling.beta_fast, "rope_scaling.beta_fast", 0, 1e6, true);
    finite(rope_scaling.beta_slow, "rope_scaling.beta_slow", 0, 1e6, true);
    finite(rope_scaling.mscale, "rope_scaling.mscale", -1e6, 1e6, false);
    finite(rope_scaling.mscale_all_dim, "rope_scaling.mscale_all_dim", 0, 1e6, false);
  }
  in_range(num_nextn_predict_layers, "num_nextn_predict_layers", 0, kMaxSize);
  in_range(bos_token_id, "bos_token_id", 0, vocab_size - 1);
  in_range(eos_token_id, "eos_token_id", 0, vocab_size - 1);
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
  c.model_type = get_str(j, "model_type", "deepseek_v3", where);
  DSV3_CHECK(c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2",
             "{}: model_type '{}' is not supported (deepseek_v3 or deepseek_v2)", where,
             c.model_type);
  std::string act = get_str(j, "hidden_act", "silu", where);
  DSV3_CHECK(act == "silu", "{}: hidden_act '{}' is not supported (silu)", where, act);
  DSV3_CHECK(!get_bool(j, "attention_bias", false, where),
             "{}: attention_bias true is not supported by DeepSeek MLA", where);

  c.vocab_size = get_int(j, "vocab_size", std::nullopt, where);
  c.hidden_size = get_int(j, "hidden_size", std::nullopt, where);
  c.intermediate_size = get_int(j, "intermediate_size", 0, where);
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", 0, where);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", std::nullopt, where);
  c.num_attention_heads = get_int(j, "num_attention_heads", std::nullopt, where);
  int64_t kvh = get_int(j, "num_key_value_heads", c.num_attention_heads, where);
  DSV3_CHECK(kvh == c.num_attention_heads,
             "{}: num_key_value_heads ({}) must equal num_attention_heads ({}) for MLA", where, kvh,
             c.num_attention_heads);
  if (j.contains("q_lora_rank") && !j["q_lora_rank"].is_null())
    c.q_lora_rank = get_int(j, "q_lora_rank", std::nullopt, where);
  c.kv_lora_rank = get_int(j, "kv_lora_rank", std::nullopt, where);
  c.qk_nope_head_dim = get_int(j, "qk_nope_head_dim", std::nullopt, where);
  c.qk_rope_head_dim = get_int(j, "qk_rope_head_dim", std::nullopt, where);
  c.v_head_dim = get_int(j, "v_head_dim", std::nullopt, where);
  c.n_routed_experts = get_int(j, "n_routed_experts", 0, where);
  c.n_shared_experts = get_int(j, "n_shared_experts", 0, where);
  c.num_experts_per_tok = get_int(j, "num_experts_per_tok", 0, where);
  c.n_group = get_int(j, "n_group", 1, where);
  c.topk_group = get_int(j, "topk_group", 1, where);
  std::string tm =
      get_str(j, "topk_method", c.model_type == "deepseek_v3" ? "noaux_tc" : "greedy", where);
  if (tm == "noaux_tc")
    c.topk_method = TopkMethod::NoauxTc;
  else if (tm == "greedy")
    c.topk_method = TopkMethod::Greedy;
  else if (tm == "group_limited_greedy")
    c.topk_method = TopkMethod::GroupLimitedGreedy;
  else
    DSV3_FAIL("{}: topk_method '{}' is not one of noaux_tc, greedy, group_limited_greedy", where,
              tm);
  std::string sf =
      get_str(j, "scoring_func", c.model_type == "deepseek_v3" ? "sigmoid" : "softmax", where);
  if (sf == "sigmoid")
    c.scoring_func = ScoringFunc::Sigmoid;
  else if (sf == "softmax")
    c.scoring_func = ScoringFunc::Softmax;
  else
    DSV3_FAIL("{}: scoring_func '{}' is not one of sigmoid, softmax", where, sf);
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", c.scoring_func == ScoringFunc::Sigmoid, where);
  c.routed_scaling_factor = get_num(j, "routed_scaling_factor", 1.0, where);
  c.first_k_dense_replace = get_int(j, "first_k_dense_replace", 0, where);
  c.moe_layer_freq = get_int(j, "moe_layer_freq", 1, where);
  c.rope_theta = get_num(j, "rope_theta", 10000.0, where);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", 1e-6, where);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", 4096, where);
  c.num_nextn_predict_layers = get_int(j, "num_nextn_predict_layers", 0, where);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, where);
  c.bos_token_id = get_int(j, "bos_token_id", 0, where);
  c.eos_token_id = get_int(j, "eos_token_id", 1, where);
  c.aux_loss_alpha = get_num(j, "aux_loss_alpha", 0.001, where);
  c.seq_aux = get_bool(j, "seq_aux", true, where);
  c.initializer_range = get_num(j, "initializer_range", 0.02, where);
  c.torch_dtype = get_str(j, "torch_dtype", "bfloat16", where);

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& r = j["rope_scaling"];
    DSV3_CHECK(r.is_object(), "{}: rope_scaling must be an object or null", where);
    const std::string rs = "rope_scaling.";
    std::string type = r.contains("type") ? get_str(r, "type", std::nullopt, where, rs)
                                          : get_str(r, "rope_type", "", where, rs);
    DSV3_CHECK(type == "yarn", "{}: rope_scaling type '{}' is not supported (yarn)", where, type);
    c.rope_scaling.yarn = true;
    c.rope_scaling.factor = get_num(r, "factor", std::nullopt, where, rs);
    c.rope_scaling.original_max_position_embeddings =
        get_int(r, "original_max_position_embeddings", std::nullopt, where, rs);
    c.rope_scaling.beta_fast = get_num(r, "beta_fast", 32, where, rs);
    c.rope_scaling.beta_slow = get_num(r, "beta_slow", 1, where, rs);
    c.rope_scaling.mscale = get_num(r, "mscale", 1, where, rs);
    c.rope_scaling.mscale_all_dim = get_num(r, "mscale_all_dim", 0, where, rs);
  }
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    DSV3_CHECK(q.is_object(), "{}: 'quantization_config' must be an object or null", where);
    const std::string qc = "quantization_config.";
    std::string qm = get_str(q, "quant_method", "", where, qc);
    DSV3_CHECK(qm == "fp8", "{}: quantization_config.quant_method '{}' is not supported (fp8)",
               where, qm);
    c.quantization.enabled = true;
    c.quantization.fmt = get_str(q, "fmt", "e4m3", where, qc);
    DSV3_CHECK(c.quantization.fmt == "e4m3", "{}: quantization fmt '{}' is not supported (e4m3)",
               where, c.quantization.fmt);
    if (q.contains("weight_block_size")) {
      const json& bs = q["weight_block_size"];
      DSV3_CHECK(bs == json::array({128, 128}),
                 "{}: 'quantization_config.weight_block_size' must be [128, 128], got {}", where,
                 bs.dump());
    }
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
