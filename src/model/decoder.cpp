// Decoder layer; see decoder.hpp (report §2.1).
#include "model/decoder.hpp"

#include <algorithm>
#include <type_traits>

#include "backend/cpu/ops.hpp"
#include "core/clock.hpp"
#include "core/scratch.hpp"

namespace dsv3::model {

template <typename S>
size_t LayerActs<S>::bytes() const {
  return (h_in.size() + attn_rstd.size() + h_mid.size() + ffn_rstd.size() + xn.size() +
          xn2.size()) *
             sizeof(S) +
         sxn2.bytes() + mla.bytes() + mlp.bytes() + moe.bytes();
}

namespace {

template <typename S>
void release(std::vector<S>& v) {
  if (v.capacity()) std::vector<S>().swap(v);
}

}  // namespace

template <typename S>
void decoder_layer_forward(S* h, const LayerW<W<S>>& w, const ModelConfig& c, const DecoderDims& d,
                           const float* cos_sin, LayerActs<S>& a, DecoderScratch<S>& s) {
  const int64_t N = d.B * d.T, D = c.hidden_size;
  const S eps = S(c.rms_norm_eps);
  // The normalized inputs are kept in FP32 unless recomputed or saved in low precision (the MLA
  // input by mla_forward, a dense MLP's here; a MoE router reads its FP32 input).
  const cpu::ActForm form = act_form<S>();
  const bool lowp = form != cpu::ActForm::F32 && !d.recompute;
  auto norm_out = [&](std::vector<S>& act, bool keep) {
    if (keep) return grow(act, size_t(N * D));
    release(act);
    return grow(s.xn, size_t(N * D));
  };
  S* tmp = grow(s.tmp, size_t(N * D));
  std::copy_n(h, N * D, grow(a.h_in, size_t(N * D)));
  S* xn = norm_out(a.xn, !d.recompute && !lowp);
  cpu::rmsnorm_forward(xn, grow(a.attn_rstd, size_t(N)), h, w.attn_norm, N, D, eps);
  mla_forward(tmp, xn, w.attn, mla_dims(c, d.B, d.T), cos_sin, d.recompute, a.mla, s.mla);
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
  std::copy_n(h, N * D, grow(a.h_mid, size_t(N * D)));
  const bool lowp2 = lowp && !w.moe;
  S* xn2 = norm_out(a.xn2, !d.recompute && !lowp2);
  cpu::rmsnorm_forward(xn2, grow(a.ffn_rstd, size_t(N)), h, w.ffn_norm, N, D, eps);
  if constexpr (std::is_same_v<S, float>) {
    if (lowp2)
      a.sxn2.save(xn2, N, D, form);
    else
      a.sxn2.release();
  }
  if (w.moe) {
    moe_forward(tmp, xn2, w.moe_w, moe_dims(c, N), a.moe, s.moe);
  } else {
    const int64_t F = c.intermediate_size;
    mlp_forward(tmp, grow(a.mlp.g, size_t(N * F)), grow(a.mlp.u, size_t(N * F)),
                static_cast<S*>(nullptr), xn2, N, w.mlp);
  }
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
}

template <typename S>
void decoder_layer_backward_input(S* dh, const LayerW<G<S>>& g, const LayerW<W<S>>& w,
                                  const ModelConfig& c, const DecoderDims& d, const float* cos_sin,
                                  const LayerActs<S>& a, DecoderScratch<S>& s, DecoderGrads<S>& gs,
                                  bool fuse_expert_weights) {
  const int64_t N = d.B * d.T, D = c.hidden_size;
  const S eps = S(c.rms_norm_eps);
  S* dxn = grow(s.dxn, size_t(N * D));
  // With recompute the two normalized inputs go to separate buffers: the weight part reads both.
  auto norm_in = [&](const std::vector<S>& act, std::vector<S>& buf, const std::vector<S>& h,
                     const S* weight) {
    if (!d.recompute) return static_cast<const S*>(act.data());
    S* xn = grow(buf, size_t(N * D));
    cpu::rmsnorm_forward(xn, grow(s.rstd, size_t(N)), h.data(), weight, N, D, eps);
    return static_cast<const S*>(xn);
  };
  // FFN.
  const S* xn2 = norm_in(a.xn2, s.xn2, a.h_mid, w.ffn_norm);
  if (w.moe) {
    moe_backward_input(dxn, dh, xn2, w.moe_w, moe_dims(c, N), a.moe, s.moe, gs.moe, false,
                       fuse_expert_weights ? &g.moe_w : nullptr);
  } else {
    const int64_t F = c.intermediate_size;
    gs.xn2 = xn2;
    gs.sxn2 = a.sxn2.saved() ? &a.sxn2 : nullptr;
    std::copy_n(dh, N * D, grow(gs.dout, size_t(N * D)));
    mlp_backward_input(dxn, grow(gs.dg, size_t(N * F)), grow(gs.du, size_t(N * F)), dh,
                       a.mlp.g.data(), a.mlp.u.data(), N, w.mlp);
  }
  cpu::rmsnorm_backward(dh, g.ffn_norm, dxn, a.h_mid.data(), w.ffn_norm, a.ffn_rstd.data(), N, D, D,
                        D, true);
  // Attention.
  const S* xn = norm_in(a.xn, s.xn, a.h_in, w.attn_norm);
  mla_backward_input(dxn, g.attn, dh, xn, w.attn, mla_dims(c, d.B, d.T), cos_sin, d.recompute,
                     a.mla, s.mla, gs.mla);
  cpu::rmsnorm_backward(dh, g.attn_norm, dxn, a.h_in.data(), w.attn_norm, a.attn_rstd.data(), N, D,
                        D, D, true);
}

template <typename S>
void decoder_layer_backward_weight(const LayerW<G<S>>& g, const LayerW<W<S>>& w,
                                   const ModelConfig& c, const DecoderDims& d,
                                   const LayerActs<S>& a, DecoderScratch<S>& s,
                                   const DecoderGrads<S>& gs) {
  const int64_t N = d.B * d.T;
  mla_backward_weight(g.attn, mla_dims(c, d.B, d.T), gs.mla);
  if (w.moe)
    moe_backward_weight(g.moe_w, moe_dims(c, N), a.moe, s.moe, gs.moe);
  else
    mlp_backward_weight(g.mlp, gs.dout.data(), gs.xn2, gs.sxn2, a.mlp.g.data(), a.mlp.u.data(),
                        gs.dg.data(), gs.du.data(), N, c.hidden_size, c.intermediate_size);
}

template <typename S>
void decoder_layer_backward(S* dh, const LayerW<G<S>>& g, const LayerW<W<S>>& w,
                            const ModelConfig& c, const DecoderDims& d, const float* cos_sin,
                            const LayerActs<S>& a, DecoderScratch<S>& s) {
  decoder_layer_backward_input(dh, g, w, c, d, cos_sin, a, s, s.grads, true);
  decoder_layer_backward_weight(g, w, c, d, a, s, s.grads);
}

void decoder_layer_cached(float* h, std::span<const SeqSpan> seqs, int64_t N,
                          const LayerW<W<float>>& w, const ModelConfig& c, const float* cos_sin,
                          MlaCache& cache, AttnImpl impl, DecoderScratch<float>& s,
                          ForwardTimes* times, std::vector<Routing>* routes) {
  const int64_t D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  float* xn = grow(s.xn, size_t(N * D));
  float* tmp = grow(s.tmp, size_t(N * D));
  cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), h, w.attn_norm, N, D, eps);
  auto t0 = Clock::now();
  mla_forward_cached(tmp, xn, seqs, w.attn, c, cos_sin, cache, impl, s.mla);
  if (times) times->attention += seconds_since(t0);
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
  cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), h, w.ffn_norm, N, D, eps);
  t0 = Clock::now();
  if (w.moe) {
    moe_forward(tmp, xn, w.moe_w, moe_dims(c, N), s.moe_acts, s.moe);
    if (routes) {
      routes->emplace_back();
      s.moe_acts.routing(routes->back(), N, c.num_experts_per_tok, c.n_routed_experts);
    }
  } else {
    const int64_t F = c.intermediate_size;
    float* g = grow(s.g, size_t(N * F));
    mlp_forward(tmp, g, grow(s.u, size_t(N * F)), g, xn, N, w.mlp);
  }
  if (times) times->ffn += seconds_since(t0);
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
}

#define DSV3_DECODER_INSTANTIATE(S)                                                             \
  template struct LayerActs<S>;                                                                 \
  template void decoder_layer_forward<S>(S*, const LayerW<W<S>>&, const ModelConfig&,           \
                                         const DecoderDims&, const float*, LayerActs<S>&,       \
                                         DecoderScratch<S>&);                                   \
  template void decoder_layer_backward<S>(S*, const LayerW<G<S>>&, const LayerW<W<S>>&,         \
                                          const ModelConfig&, const DecoderDims&, const float*, \
                                          const LayerActs<S>&, DecoderScratch<S>&);             \
  template void decoder_layer_backward_input<S>(                                                \
      S*, const LayerW<G<S>>&, const LayerW<W<S>>&, const ModelConfig&, const DecoderDims&,     \
      const float*, const LayerActs<S>&, DecoderScratch<S>&, DecoderGrads<S>&, bool);           \
  template void decoder_layer_backward_weight<S>(                                               \
      const LayerW<G<S>>&, const LayerW<W<S>>&, const ModelConfig&, const DecoderDims&,         \
      const LayerActs<S>&, DecoderScratch<S>&, const DecoderGrads<S>&);
DSV3_DECODER_INSTANTIATE(float)
DSV3_DECODER_INSTANTIATE(double)

}  // namespace dsv3::model
