// Parameter table of params.hpp, following the released checkpoints' layout (MTP module stored
// as layer num_hidden_layers with embed_tokens, enorm, hnorm, eh_proj, shared_head).
#include "model/params.hpp"

namespace dsv3::model {

std::string layer_prefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

namespace {
void add_decoder_layer(std::vector<ParamSpec>& t, const ModelConfig& c, int64_t layer, bool moe,
                       bool mtp) {
  const std::string p = layer_prefix(layer);
  const int64_t D = c.hidden_size, H = c.num_attention_heads, R = c.kv_lora_rank;
  auto lin = [&](const std::string& n, int64_t out, int64_t in, bool resid = false) {
    t.push_back({p + n, {out, in}, ParamRole::Linear, true, resid, mtp});
  };
  auto norm = [&](const std::string& n, int64_t d) {
    t.push_back({p + n, {d}, ParamRole::Norm, false, false, mtp});
  };
  norm("input_layernorm.weight", D);
  if (c.q_lora_rank) {
    lin("self_attn.q_a_proj.weight", *c.q_lora_rank, D);
    norm("self_attn.q_a_layernorm.weight", *c.q_lora_rank);
    lin("self_attn.q_b_proj.weight", H * c.qk_head_dim(), *c.q_lora_rank);
  } else {
    lin("self_attn.q_proj.weight", H * c.qk_head_dim(), D);
  }
  lin("self_attn.kv_a_proj_with_mqa.weight", R + c.qk_rope_head_dim, D);
  norm("self_attn.kv_a_layernorm.weight", R);
  lin("self_attn.kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), R);
  lin("self_attn.o_proj.weight", D, H * c.v_head_dim, true);
  norm("post_attention_layernorm.weight", D);
  if (!moe) {
    lin("mlp.gate_proj.weight", c.intermediate_size, D);
    lin("mlp.up_proj.weight", c.intermediate_size, D);
    lin("mlp.down_proj.weight", D, c.intermediate_size, true);
    return;
  }
  const int64_t F = c.moe_intermediate_size;
  t.push_back(
      {p + "mlp.gate.weight", {c.n_routed_experts, D}, ParamRole::Router, false, false, mtp});
  if (c.topk_method == TopkMethod::NoauxTc)
    t.push_back({p + "mlp.gate.e_score_correction_bias",
                 {c.n_routed_experts},
                 ParamRole::RouterBias,
                 false,
                 false,
                 mtp});
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    std::string ep = "mlp.experts." + std::to_string(e) + ".";
    lin(ep + "gate_proj.weight", F, D);
    lin(ep + "up_proj.weight", F, D);
    lin(ep + "down_proj.weight", D, F, true);
  }
  if (c.n_shared_experts > 0) {
    const int64_t S = F * c.n_shared_experts;
    lin("mlp.shared_experts.gate_proj.weight", S, D);
    lin("mlp.shared_experts.up_proj.weight", S, D);
    lin("mlp.shared_experts.down_proj.weight", D, S, true);
  }
}
}  // namespace

std::vector<ParamSpec> param_table(const ModelConfig& c) {
  std::vector<ParamSpec> t;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  t.push_back({"model.embed_tokens.weight", {V, D}, ParamRole::Embedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    add_decoder_layer(t, c, l, c.is_moe_layer(l), false);
  t.push_back({"model.norm.weight", {D}, ParamRole::Norm});
  t.push_back({"lm_head.weight", {V, D}, ParamRole::Head});
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    int64_t l = c.num_hidden_layers + k;
    std::string p = layer_prefix(l);
    t.push_back({p + "embed_tokens.weight", {V, D}, ParamRole::Embedding, false, false, true});
    t.push_back({p + "enorm.weight", {D}, ParamRole::Norm, false, false, true});
    t.push_back({p + "hnorm.weight", {D}, ParamRole::Norm, false, false, true});
    t.push_back({p + "eh_proj.weight", {D, 2 * D}, ParamRole::Linear, false, false, true});
    add_decoder_layer(t, c, l, c.n_routed_experts > 0, true);
    t.push_back({p + "shared_head.norm.weight", {D}, ParamRole::Norm, false, false, true});
    t.push_back({p + "shared_head.head.weight", {V, D}, ParamRole::Head, false, false, true});
  }
  return t;
}

}  // namespace dsv3::model
