// Decoder layer for training; see decoder_train.hpp (report §2.1).
#include "train/decoder_train.hpp"

#include <algorithm>

#include "backend/cpu/ops.hpp"
#include "model/params.hpp"
#include "train/linalg.hpp"

namespace dsv3::train {

template <typename P>
LayerParams<P> bind_layer(const ParamLayout& layout, P* base, const model::ModelConfig& c,
                          int64_t layer, bool moe) {
  const std::string p = model::layer_prefix(layer);
  auto at = [&](const std::string& n) { return base + layout.get(p + n).offset; };
  auto mlp = [&](const std::string& q) {
    MlpParams<P> m;
    m.gate = at(q + "gate_proj.weight");
    m.up = at(q + "up_proj.weight");
    m.down = at(q + "down_proj.weight");
    return m;
  };
  LayerParams<P> l;
  l.attn_norm = at("input_layernorm.weight");
  l.ffn_norm = at("post_attention_layernorm.weight");
  if (c.q_lora_rank) {
    l.attn.q_a = at("self_attn.q_a_proj.weight");
    l.attn.q_a_norm = at("self_attn.q_a_layernorm.weight");
    l.attn.q_b = at("self_attn.q_b_proj.weight");
  } else {
    l.attn.q = at("self_attn.q_proj.weight");
  }
  l.attn.kv_a = at("self_attn.kv_a_proj_with_mqa.weight");
  l.attn.kv_a_norm = at("self_attn.kv_a_layernorm.weight");
  l.attn.kv_b = at("self_attn.kv_b_proj.weight");
  l.attn.o = at("self_attn.o_proj.weight");
  l.moe = moe;
  if (!moe) {
    l.mlp = mlp("mlp.");
    return l;
  }
  l.moe_p.router = at("mlp.gate.weight");
  if (c.topk_method == model::TopkMethod::NoauxTc)
    l.moe_p.bias = at("mlp.gate.e_score_correction_bias");
  for (int64_t e = 0; e < c.n_routed_experts; ++e)
    l.moe_p.experts.push_back(mlp("mlp.experts." + std::to_string(e) + "."));
  if (c.n_shared_experts > 0) l.moe_p.shared = mlp("mlp.shared_experts.");
  return l;
}

template <typename S>
size_t LayerActs<S>::bytes() const {
  return (h_in.size() + attn_rstd.size() + h_mid.size() + ffn_rstd.size() + xn.size() +
          xn2.size()) *
             sizeof(S) +
         mla.bytes() + mlp.bytes() + moe.bytes();
}

template <typename S>
void decoder_layer_forward(S* h, const LayerParams<const S>& w, const model::ModelConfig& c,
                           const DecoderDims& d, const float* cos_sin, LayerActs<S>& a,
                           DecoderScratch<S>& s) {
  const int64_t N = d.B * d.T, D = c.hidden_size;
  const S eps = S(c.rms_norm_eps);
  auto norm_out = [&](std::vector<S>& act) {
    return d.recompute ? grow(s.xn, size_t(N * D)) : grow(act, size_t(N * D));
  };
  S* tmp = grow(s.tmp, size_t(N * D));
  std::copy_n(h, N * D, grow(a.h_in, size_t(N * D)));
  S* xn = norm_out(a.xn);
  cpu::rmsnorm_forward(xn, grow(a.attn_rstd, size_t(N)), h, w.attn_norm, N, D, eps);
  mla_train_forward(tmp, xn, w.attn, mla_dims(c, d.B, d.T), cos_sin, d.recompute, a.mla, s.mla);
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
  std::copy_n(h, N * D, grow(a.h_mid, size_t(N * D)));
  S* xn2 = norm_out(a.xn2);
  cpu::rmsnorm_forward(xn2, grow(a.ffn_rstd, size_t(N)), h, w.ffn_norm, N, D, eps);
  if (w.moe) {
    moe_train_forward(tmp, xn2, w.moe_p, moe_dims(c, N), a.moe, s.moe);
  } else {
    const int64_t F = c.intermediate_size;
    mlp_train_forward(tmp, grow(a.mlp.g, size_t(N * F)), grow(a.mlp.u, size_t(N * F)),
                      grow(a.mlp.act, size_t(N * F)), xn2, w.mlp, N, D, F);
  }
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
}

template <typename S>
void decoder_layer_backward(S* dh, const LayerParams<S>& g, const LayerParams<const S>& w,
                            const model::ModelConfig& c, const DecoderDims& d, const float* cos_sin,
                            const LayerActs<S>& a, DecoderScratch<S>& s) {
  const int64_t N = d.B * d.T, D = c.hidden_size;
  const S eps = S(c.rms_norm_eps);
  S* dxn = grow(s.dxn, size_t(N * D));
  auto norm_in = [&](const std::vector<S>& act, const std::vector<S>& h, const S* weight) {
    if (!d.recompute) return static_cast<const S*>(act.data());
    S* xn = grow(s.xn, size_t(N * D));
    cpu::rmsnorm_forward(xn, grow(s.rstd, size_t(N)), h.data(), weight, N, D, eps);
    return static_cast<const S*>(xn);
  };
  // FFN.
  const S* xn2 = norm_in(a.xn2, a.h_mid, w.ffn_norm);
  if (w.moe) {
    moe_train_backward(dxn, g.moe_p, dh, xn2, w.moe_p, moe_dims(c, N), a.moe, s.moe);
  } else {
    const int64_t F = c.intermediate_size;
    mlp_train_backward(dxn, g.mlp, dh, xn2, a.mlp.g.data(), a.mlp.u.data(), a.mlp.act.data(), w.mlp,
                       N, D, F, grow(s.dg, size_t(N * F)), grow(s.du, size_t(N * F)));
  }
  cpu::rmsnorm_backward(dh, g.ffn_norm, dxn, a.h_mid.data(), w.ffn_norm, a.ffn_rstd.data(), N, D, D,
                        D, true);
  // Attention.
  const S* xn = norm_in(a.xn, a.h_in, w.attn_norm);
  mla_train_backward(dxn, g.attn, dh, xn, w.attn, mla_dims(c, d.B, d.T), cos_sin, d.recompute,
                     a.mla, s.mla);
  cpu::rmsnorm_backward(dh, g.attn_norm, dxn, a.h_in.data(), w.attn_norm, a.attn_rstd.data(), N, D,
                        D, D, true);
}

#define DSV3_DECODER_INSTANTIATE(S)                                                               \
  template LayerParams<S> bind_layer<S>(const ParamLayout&, S*, const model::ModelConfig&,        \
                                        int64_t, bool);                                           \
  template LayerParams<const S> bind_layer<const S>(const ParamLayout&, const S*,                 \
                                                    const model::ModelConfig&, int64_t, bool);    \
  template struct LayerActs<S>;                                                                   \
  template void decoder_layer_forward<S>(S*, const LayerParams<const S>&,                         \
                                         const model::ModelConfig&, const DecoderDims&,           \
                                         const float*, LayerActs<S>&, DecoderScratch<S>&);        \
  template void decoder_layer_backward<S>(S*, const LayerParams<S>&, const LayerParams<const S>&, \
                                          const model::ModelConfig&, const DecoderDims&,          \
                                          const float*, const LayerActs<S>&, DecoderScratch<S>&);
DSV3_DECODER_INSTANTIATE(float)
DSV3_DECODER_INSTANTIATE(double)

}  // namespace dsv3::train
