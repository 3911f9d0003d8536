// MTP modules for training; see mtp_train.hpp (report §2.2).
#include "train/mtp_train.hpp"

#include <algorithm>

#include "backend/cpu/ops.hpp"
#include "model/params.hpp"
#include "train/linalg.hpp"

namespace dsv3::train {

template <typename P>
MtpParams<P> bind_mtp(const ParamLayout& layout, P* base, const model::ModelConfig& c, int64_t k,
                      bool tie_embeddings) {
  const int64_t l = c.num_hidden_layers + k - 1;
  const std::string p = model::layer_prefix(l);
  auto at = [&](const std::string& n) { return base + layout.get(n).offset; };
  MtpParams<P> m;
  m.embed = tie_embeddings ? at("model.embed_tokens.weight") : at(p + "embed_tokens.weight");
  m.enorm = at(p + "enorm.weight");
  m.hnorm = at(p + "hnorm.weight");
  m.eh_proj = at(p + "eh_proj.weight");
  m.head_norm = at(p + "shared_head.norm.weight");
  m.head = tie_embeddings ? at("lm_head.weight") : at(p + "shared_head.head.weight");
  m.layer = bind_layer<P>(layout, base, c, l, c.n_routed_experts > 0);
  return m;
}

template <typename S>
size_t MtpActs<S>::bytes() const {
  return (hin.size() + e.size() + e_rstd.size() + h_rstd.size() + cat.size() + y.size() +
          dy.size()) *
             sizeof(S) +
         (tok.size() + tgt.size()) * sizeof(int32_t) + layer.bytes();
}

namespace {
template <typename S>
void concat_inputs(S* cat, S* e_rstd, S* h_rstd, const S* e, const S* hin,
                   const MtpParams<const S>& w, int64_t N, int64_t D, S eps) {
  cpu::rmsnorm_forward(cat, e_rstd, e, w.enorm, N, D, eps, D, 2 * D);
  cpu::rmsnorm_forward(cat + D, h_rstd, hin, w.hnorm, N, D, eps, D, 2 * D);
}
}  // namespace

template <typename S>
double mtp_forward(const S* prev, const int32_t* tokens, int64_t B, int64_t T, int64_t k,
                   const MtpParams<const S>& w, const MtpParams<S>* g, S scale,
                   const model::ModelConfig& c, bool recompute, const float* cos_sin, MtpActs<S>& a,
                   MtpScratch<S>& s, DecoderScratch<S>& ds) {
  const int64_t Tk = T - k, Tp = T - k + 1, N = B * Tk, D = c.hidden_size, V = c.vocab_size;
  const S eps = S(c.rms_norm_eps);
  S* hin = grow(a.hin, size_t(N * D));
  int32_t* tok = grow(a.tok, size_t(N));
  int32_t* tgt = grow(a.tgt, size_t(N));
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(prev + b * Tp * D, Tk * D, hin + b * Tk * D);
    for (int64_t i = 0; i < Tk; ++i) {
      tok[b * Tk + i] = tokens[b * T + i + k];
      tgt[b * Tk + i] = i + k + 1 < T ? tokens[b * T + i + k + 1] : -1;
    }
  }
  S* e = grow(a.e, size_t(N * D));
  embedding_forward(e, w.embed, tok, N, D, V);
  S* cat = recompute ? grow(s.cat, size_t(N * 2 * D)) : grow(a.cat, size_t(N * 2 * D));
  concat_inputs(cat, grow(a.e_rstd, size_t(N)), grow(a.h_rstd, size_t(N)), e, hin, w, N, D, eps);
  S* y = grow(a.y, size_t(N * D));
  linear_forward(y, cat, w.eh_proj, N, 2 * D, D);
  decoder_layer_forward(y, w.layer, c, DecoderDims{B, Tk, recompute}, cos_sin, a.layer, ds);
  S* yn = grow(s.yn, size_t(N * D));
  S* head_rstd = grow(s.dh, size_t(N));
  cpu::rmsnorm_forward(yn, head_rstd, y, w.head_norm, N, D, eps);
  S* dyn = g ? grow(s.dyn, size_t(N * D)) : nullptr;
  int64_t count = 0;
  const double ce = head_cross_entropy(dyn, g ? g->head : nullptr, yn, w.head, tgt, N, D, V, scale,
                                       &count, s.head);
  if (g)
    cpu::rmsnorm_backward(grow(a.dy, size_t(N * D)), g->head_norm, dyn, y, w.head_norm, head_rstd,
                          N, D);
  return ce;
}

template <typename S>
void mtp_backward(S* dprev, const MtpParams<S>& g, const MtpParams<const S>& w, int64_t B,
                  int64_t T, int64_t k, const model::ModelConfig& c, bool recompute,
                  const float* cos_sin, MtpActs<S>& a, MtpScratch<S>& s, DecoderScratch<S>& ds) {
  const int64_t Tk = T - k, Tp = T - k + 1, N = B * Tk, D = c.hidden_size;
  const S eps = S(c.rms_norm_eps);
  S* dy = a.dy.data();
  decoder_layer_backward(dy, g.layer, w.layer, c, DecoderDims{B, Tk, recompute}, cos_sin, a.layer,
                         ds);
  const S* cat = a.cat.data();
  if (recompute) {
    S* t = grow(s.cat, size_t(N * 2 * D));
    S* r = grow(s.dh, size_t(2 * N));
    concat_inputs(t, r, r + N, a.e.data(), a.hin.data(), w, N, D, eps);
    cat = t;
  }
  S* dcat = grow(s.dcat, size_t(N * 2 * D));
  linear_backward_input(dcat, dy, w.eh_proj, N, 2 * D, D);
  linear_backward_weight(g.eh_proj, dy, cat, N, 2 * D, D);
  S* de = grow(s.de, size_t(N * D));
  cpu::rmsnorm_backward(de, g.enorm, dcat, a.e.data(), w.enorm, a.e_rstd.data(), N, D, D, 2 * D);
  embedding_backward(g.embed, de, a.tok.data(), N, D);
  cpu::rmsnorm_backward(de, g.hnorm, dcat + D, a.hin.data(), w.hnorm, a.h_rstd.data(), N, D, D,
                        2 * D);
  parallel_for(N, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      const int64_t b = n / Tk, i = n % Tk;
      S* dst = dprev + (b * Tp + i) * D;
      const S* src = de + n * D;
      for (int64_t j = 0; j < D; ++j) dst[j] += src[j];
    }
  });
}

#define DSV3_MTP_INSTANTIATE(S)                                                                  \
  template MtpParams<S> bind_mtp<S>(const ParamLayout&, S*, const model::ModelConfig&, int64_t,  \
                                    bool);                                                       \
  template MtpParams<const S> bind_mtp<const S>(const ParamLayout&, const S*,                    \
                                                const model::ModelConfig&, int64_t, bool);       \
  template struct MtpActs<S>;                                                                    \
  template double mtp_forward<S>(const S*, const int32_t*, int64_t, int64_t, int64_t,            \
                                 const MtpParams<const S>&, const MtpParams<S>*, S,              \
                                 const model::ModelConfig&, bool, const float*, MtpActs<S>&,     \
                                 MtpScratch<S>&, DecoderScratch<S>&);                            \
  template void mtp_backward<S>(S*, const MtpParams<S>&, const MtpParams<const S>&, int64_t,     \
                                int64_t, int64_t, const model::ModelConfig&, bool, const float*, \
                                MtpActs<S>&, MtpScratch<S>&, DecoderScratch<S>&);
DSV3_MTP_INSTANTIATE(float)
DSV3_MTP_INSTANTIATE(double)

}  // namespace dsv3::train
