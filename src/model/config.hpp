// Model configuration: the Hugging Face DeepseekV3Config / DeepseekV2Config keys of config.json,
// validated. Every architectural switch is a named field here.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace dsv3::model {

enum class ScoringFunc { Sigmoid, Softmax };
enum class TopkMethod { NoauxTc, Greedy, GroupLimitedGreedy };

struct RopeScaling {
  bool yarn = false;  // false: plain RoPE
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32, beta_slow = 1, mscale = 1, mscale_all_dim = 0;
};

struct FP8Quantization {
  bool enabled = false;
  std::string fmt = "e4m3";
  int64_t block_rows = 128, block_cols = 128;
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";  // deepseek_v3 | deepseek_v2
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0, num_attention_heads = 0;
  std::optional<int64_t> q_lora_rank;  // null: direct q_proj (V2-Lite)
  int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t n_routed_experts = 0, n_shared_experts = 0, num_experts_per_tok = 0;
  int64_t n_group = 1, topk_group = 1;
  TopkMethod topk_method = TopkMethod::NoauxTc;
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  int64_t first_k_dense_replace = 0, moe_layer_freq = 1;
  double rope_theta = 10000, rms_norm_eps = 1e-6;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 4096;
  int64_t num_nextn_predict_layers = 0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0, eos_token_id = 1;
  double aux_loss_alpha = 0.001;
  bool seq_aux = true;
  double initializer_range = 0.02;
  std::string torch_dtype = "bfloat16";
  FP8Quantization quantization;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const;
  // Attention softmax scale with the YaRN mscale correction.
  double softmax_scale() const;
  // Throws dsv3::Error naming the field when values are inconsistent.
  void validate(const std::string& where) const;
  nlohmann::json to_json() const;
};

// Parses config.json text; `where` names the file in errors. Unknown keys are reported by
// log_warn; missing required keys and bad values are errors.
ModelConfig parse_config(const std::string& json_text, const std::string& where);
ModelConfig load_config(const std::string& path);  // path of config.json or its directory
void save_config(const ModelConfig& c, const std::string& path);

}  // namespace dsv3::model
