// The one weight view of the model. Every layer reads its weights through these structs, whatever
// stores them: a Hugging Face checkpoint (BF16 / F32 / F16 / FP8 block-scaled, mmapped or copied;
// model/load.cpp), a training arena of FP32 parameters (train::ParamStore, viewed in place), or
// a double copy for finite-difference checks. Gradients use the same structs over plain pointers.
//
// A struct is parameterized by a weight kind K, which names three types:
//   K::Lin    a linear layer's matrix [out, in]          (float: cpu::LinearWeight)
//   K::Vec    an FP32 vector or small matrix: RMSNorm weights, the router [E, D] and its bias
//   K::Table  the embedding table [V, D]                 (float: the stored rows, any dtype)
//
// The binding below is the one list of the model's tensors: bind_model() asks a binder for each
// tensor by its HF name, shape and role. The parameter table (params.hpp) is what a recording
// binder sees; the checkpoint loader, the training arenas, the exporter and the checkpoints all
// derive from it. Adding a tensor is one line here.
//
// Glossary: D hidden, V vocab, H heads, R kv_lora_rank, Qr q_lora_rank, Dn/Dr/Dv head dims,
// Dq = Dn + Dr, E routed experts, F expert width.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "model/config.hpp"

namespace dsv3::model {

template <typename S>
struct WeightKind;
template <>
struct WeightKind<float> {
  using Lin = cpu::LinearWeight;
  using Vec = const float*;
  using Table = cpu::WeightView;
};
template <>
struct WeightKind<double> {
  using Lin = cpu::DenseWeight<double>;
  using Vec = const double*;
  using Table = cpu::DenseWeight<double>;
};
// Gradients: pointers into a gradient arena laid out like the parameters.
template <typename S>
struct GradKind {
  using Lin = S*;
  using Vec = S*;
  using Table = S*;
};

template <typename S>
using W = WeightKind<S>;
template <typename S>
using G = GradKind<S>;

template <typename K>
struct MlpW {
  typename K::Lin gate{}, up{}, down{};  // [F, D], [F, D], [D, F]
};

template <typename K>
struct MlaW {
  typename K::Lin q_a{};        // [Qr, D]       (q_lora_rank set)
  typename K::Vec q_a_norm{};   // [Qr]
  typename K::Lin q_b{};        // [H*Dq, Qr]
  typename K::Lin q{};          // [H*Dq, D]     (no q_lora_rank)
  typename K::Lin kv_a{};       // [R+Dr, D]
  typename K::Vec kv_a_norm{};  // [R]
  typename K::Lin kv_b{};       // [H*(Dn+Dv), R]
  typename K::Lin o{};          // [D, H*Dv]
};

template <typename K>
struct MoeW {
  typename K::Vec router{};  // [E, D] mlp.gate.weight, FP32: routing is decided in FP32
  typename K::Vec bias{};    // [E] e_score_correction_bias (null without noaux_tc; selection only)
  std::vector<MlpW<K>> experts;
  MlpW<K> shared;  // Fs = F·n_shared_experts wide; unset when n_shared_experts == 0
};

template <typename K>
struct LayerW {
  typename K::Vec attn_norm{}, ffn_norm{};  // [D]
  MlaW<K> attn;
  bool moe = false;
  MlpW<K> mlp;    // dense layers
  MoeW<K> moe_w;  // MoE layers
};

// One MTP module (report §2.2), stored as layer num_hidden_layers + k.
template <typename K>
struct MtpW {
  typename K::Table embed{};  // [V, D] the module's copy (tied: the main embedding)
  typename K::Vec enorm{}, hnorm{};
  typename K::Lin eh_proj{};  // [D, 2D]
  LayerW<K> layer;
  typename K::Vec head_norm{};  // [D] shared_head.norm
  typename K::Lin head{};       // [V, D] the module's copy (tied: lm_head)
};

template <typename K>
struct ModelW {
  typename K::Table embed{};  // [V, D]
  std::vector<LayerW<K>> layers;
  typename K::Vec norm{};  // [D]
  typename K::Lin head{};  // [V, D]
  std::vector<MtpW<K>> mtp;
};

// What a binder is told about each tensor besides its name and shape.
enum class ParamRole { Linear, Norm, Embedding, Head, Router, RouterBias };
struct ParamFlags {
  ParamRole role = ParamRole::Linear;
  // Stored as F8_E4M3 + `<name>_scale_inv` in FP8 checkpoints (the `*_proj` weights of decoder
  // layers, as in the DeepSeek-V3 release).
  bool fp8 = false;
  // Linear layers whose output is added to the residual stream (o_proj, down_proj) get a
  // smaller initialization.
  bool residual_out = false;
  bool mtp = false;  // belongs to an MTP module (layer index >= num_hidden_layers)
};

std::string layer_prefix(int64_t layer);  // "model.layers.{layer}."

// A binder B for kind K provides
//   K::Lin   B::lin(name, rows, cols, flags)
//   K::Vec   B::vec(name, shape, flags)
//   K::Table B::table(name, rows, cols, flags, fallback)
// where `fallback` names the tensor to use when a checkpoint omits `name` (the MTP module's
// copies of the shared embedding and head), or is empty.
template <typename K, typename B>
void bind_mlp(MlpW<K>& w, B& b, const std::string& p, int64_t F, int64_t D, bool mtp) {
  w.gate = b.lin(p + "gate_proj.weight", F, D, {ParamRole::Linear, true, false, mtp});
  w.up = b.lin(p + "up_proj.weight", F, D, {ParamRole::Linear, true, false, mtp});
  w.down = b.lin(p + "down_proj.weight", D, F, {ParamRole::Linear, true, true, mtp});
}

template <typename K, typename B>
void bind_layer(LayerW<K>& w, B& b, const ModelConfig& c, int64_t layer, bool moe, bool mtp) {
  const std::string p = layer_prefix(layer);
  const int64_t D = c.hidden_size, H = c.num_attention_heads, R = c.kv_lora_rank;
  const ParamFlags lin{ParamRole::Linear, true, false, mtp},
      norm{ParamRole::Norm, false, false, mtp};
  w.attn_norm = b.vec(p + "input_layernorm.weight", {D}, norm);
  MlaW<K>& a = w.attn;
  if (c.q_lora_rank) {
    const int64_t Qr = *c.q_lora_rank;
    a.q_a = b.lin(p + "self_attn.q_a_proj.weight", Qr, D, lin);
    a.q_a_norm = b.vec(p + "self_attn.q_a_layernorm.weight", {Qr}, norm);
    a.q_b = b.lin(p + "self_attn.q_b_proj.weight", H * c.qk_head_dim(), Qr, lin);
  } else {
    a.q = b.lin(p + "self_attn.q_proj.weight", H * c.qk_head_dim(), D, lin);
  }
  a.kv_a = b.lin(p + "self_attn.kv_a_proj_with_mqa.weight", R + c.qk_rope_head_dim, D, lin);
  a.kv_a_norm = b.vec(p + "self_attn.kv_a_layernorm.weight", {R}, norm);
  a.kv_b = b.lin(p + "self_attn.kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), R, lin);
  a.o = b.lin(p + "self_attn.o_proj.weight", D, H * c.v_head_dim,
              {ParamRole::Linear, true, true, mtp});
  w.ffn_norm = b.vec(p + "post_attention_layernorm.weight", {D}, norm);
  w.moe = moe;
  if (!moe) {
    bind_mlp(w.mlp, b, p + "mlp.", c.intermediate_size, D, mtp);
    return;
  }
  const int64_t E = c.n_routed_experts, F = c.moe_intermediate_size;
  MoeW<K>& m = w.moe_w;
  m.router = b.vec(p + "mlp.gate.weight", {E, D}, {ParamRole::Router, false, false, mtp});
  if (c.topk_method == TopkMethod::NoauxTc)
    m.bias = b.vec(p + "mlp.gate.e_score_correction_bias", {E},
                   {ParamRole::RouterBias, false, false, mtp});
  m.experts.resize(size_t(E));
  for (int64_t e = 0; e < E; ++e)
    bind_mlp(m.experts[size_t(e)], b, p + "mlp.experts." + std::to_string(e) + ".", F, D, mtp);
  if (c.n_shared_experts > 0)
    bind_mlp(m.shared, b, p + "mlp.shared_experts.", F * c.n_shared_experts, D, mtp);
}

// MTP module k (0-based), layer index num_hidden_layers + k.
template <typename K, typename B>
void bind_mtp(MtpW<K>& w, B& b, const ModelConfig& c, int64_t k) {
  const int64_t l = c.num_hidden_layers + k, D = c.hidden_size, V = c.vocab_size;
  const std::string p = layer_prefix(l);
  const ParamFlags norm{ParamRole::Norm, false, false, true};
  w.embed = b.table(p + "embed_tokens.weight", V, D, {ParamRole::Embedding, false, false, true},
                    "model.embed_tokens.weight");
  w.enorm = b.vec(p + "enorm.weight", {D}, norm);
  w.hnorm = b.vec(p + "hnorm.weight", {D}, norm);
  w.eh_proj = b.lin(p + "eh_proj.weight", D, 2 * D, {ParamRole::Linear, false, false, true});
  bind_layer(w.layer, b, c, l, c.n_routed_experts > 0, true);
  w.head_norm = b.vec(p + "shared_head.norm.weight", {D}, norm);
  w.head = b.lin(p + "shared_head.head.weight", V, D, {ParamRole::Head, false, false, true},
                 "lm_head.weight");
}

// The whole model in the released checkpoints' order; MTP modules when `mtp_modules` > 0.
template <typename K, typename B>
void bind_model(ModelW<K>& w, B& b, const ModelConfig& c, int64_t mtp_modules) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  w.embed = b.table("model.embed_tokens.weight", V, D, {ParamRole::Embedding}, "");
  w.layers.resize(size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    bind_layer(w.layers[size_t(l)], b, c, l, c.is_moe_layer(l), false);
  w.norm = b.vec("model.norm.weight", {D}, {ParamRole::Norm});
  w.head = b.lin("lm_head.weight", V, D, {ParamRole::Head}, "");
  w.mtp.resize(size_t(mtp_modules));
  for (int64_t k = 0; k < mtp_modules; ++k) bind_mtp(w.mtp[size_t(k)], b, c, k);
}

}  // namespace dsv3::model
