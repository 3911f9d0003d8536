// MTP modules; see mtp.hpp (report §2.2).
#include "model/mtp.hpp"

#include <algorithm>
#include <type_traits>

#include "backend/cpu/ops.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"

namespace dsv3::model {

template <typename S>
size_t MtpActs<S>::bytes() const {
  return (hin.size() + e.size() + e_rstd.size() + h_rstd.size() + cat.size() + y.size() +
          dy.size()) *
             sizeof(S) +
         scat.bytes() + (tok.size() + tgt.size()) * sizeof(int32_t) + layer.bytes();
}

namespace {
template <typename S>
void concat_inputs(S* cat, S* e_rstd, S* h_rstd, const S* e, const S* hin, const MtpW<W<S>>& w,
                   int64_t N, int64_t D, S eps) {
  cpu::rmsnorm_forward(cat, e_rstd, e, w.enorm, N, D, eps, D, 2 * D);
  cpu::rmsnorm_forward(cat + D, h_rstd, hin, w.hnorm, N, D, eps, D, 2 * D);
}
}  // namespace

template <typename S>
double mtp_forward(const S* prev, const int32_t* tokens, int64_t B, int64_t T, int64_t k,
                   const MtpW<W<S>>& w, const MtpW<G<S>>* g, S scale, const ModelConfig& c,
                   bool recompute, const float* cos_sin, MtpActs<S>& a, MtpScratch<S>& s,
                   DecoderScratch<S>& ds) {
  const int64_t Tk = T - k, Tp = T - k + 1, N = B * Tk, D = c.hidden_size;
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
  embedding_forward<S>(e, w.embed, tok, N);
  const cpu::ActForm form = act_form<S>();
  const bool lowp = form != cpu::ActForm::F32 && !recompute;
  if (lowp && a.cat.capacity()) std::vector<S>().swap(a.cat);
  S* cat = recompute || lowp ? grow(s.cat, size_t(N * 2 * D)) : grow(a.cat, size_t(N * 2 * D));
  concat_inputs(cat, grow(a.e_rstd, size_t(N)), grow(a.h_rstd, size_t(N)), e, hin, w, N, D, eps);
  if constexpr (std::is_same_v<S, float>) {
    if (lowp)
      a.scat.save(cat, N, 2 * D, form);
    else
      a.scat.release();
  }
  S* y = grow(a.y, size_t(N * D));
  cpu::linear_forward(y, cat, N, w.eh_proj);
  decoder_layer_forward(y, w.layer, c, DecoderDims{B, Tk, recompute}, cos_sin, a.layer, ds);
  S* yn = grow(s.yn, size_t(N * D));
  S* head_rstd = grow(s.dh, size_t(N));
  cpu::rmsnorm_forward(yn, head_rstd, y, w.head_norm, N, D, eps);
  S* dyn = g ? grow(s.dyn, size_t(N * D)) : nullptr;
  int64_t count = 0;
  const double ce =
      head_cross_entropy<S>(dyn, g ? g->head : nullptr, yn, w.head, tgt, N, scale, &count, s.head);
  if (g)
    cpu::rmsnorm_backward(grow(a.dy, size_t(N * D)), g->head_norm, dyn, y, w.head_norm, head_rstd,
                          N, D);
  return ce;
}

template <typename S>
void mtp_backward(S* dprev, const MtpW<G<S>>& g, const MtpW<W<S>>& w, int64_t B, int64_t T,
                  int64_t k, const ModelConfig& c, bool recompute, const float* cos_sin,
                  MtpActs<S>& a, MtpScratch<S>& s, DecoderScratch<S>& ds) {
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
  cpu::linear_backward_input(dcat, dy, N, w.eh_proj);
  wgrad_saved(g.eh_proj, dy, cat, recompute ? nullptr : &a.scat, N, 2 * D, D);
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

namespace {

// mtp_forward_cached's path for rows that are all last tokens of their sequences (see mtp.hpp),
// from x[N, D] (the eh_proj output); false (nothing done) when a row is not such a token.
bool last_tokens_only(const float* x, std::span<const SeqSpan> seqs, int64_t N, const int64_t* rows,
                      int64_t nrows, float* logits, const MtpW<W<float>>& w, const ModelConfig& c,
                      const float* cos_sin, MlaCache& cache, AttnImpl impl, MtpScratch<float>& s,
                      DecoderScratch<float>& ds, ForwardTimes* times) {
  const int64_t D = c.hidden_size, ns = int64_t(seqs.size());
  const float eps = float(c.rms_norm_eps);
  // Which sequences have their last token asked for: out_row[i] its index among those, or -1.
  std::vector<int64_t>& out = s.out_row;
  out.assign(size_t(ns), -1);
  for (int64_t r = 0; r < nrows; ++r) {
    int64_t end = 0, i = 0;
    for (; i < ns; ++i) {
      end += seqs[size_t(i)].len;
      if (end - 1 >= rows[r]) break;
    }
    if (i == ns || end - 1 != rows[r]) return false;
    out[size_t(i)] = 0;
  }
  // The latent-only tokens (all but the asked-for last ones), gathered with their spans.
  s.spans.clear();
  s.last.clear();
  float* xa = grow(s.e, size_t(N * D));
  float* xl = grow(s.cat, size_t(N * D));
  int64_t na = 0, nl = 0;
  for (int64_t i = 0, first = 0; i < ns; ++i) {
    const SeqSpan& q = seqs[size_t(i)];
    const int64_t keep = q.len - (out[size_t(i)] >= 0 ? 1 : 0);
    if (keep > 0) {
      s.spans.push_back({q.start, keep, q.blocks, q.nblocks});
      std::copy_n(x + first * D, keep * D, xa + na * D);
      na += keep;
    }
    if (out[size_t(i)] >= 0) {
      s.last.push_back({q.start + q.len - 1, 1, q.blocks, q.nblocks});
      std::copy_n(x + (first + q.len - 1) * D, D, xl + nl * D);
      out[size_t(i)] = nl++;
    }
    first += q.len;
  }
  if (na > 0) {
    float* xn = grow(s.yn, size_t(na * D));
    cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), xa, w.layer.attn_norm, na, D, eps);
    mla_write_latents(xn, s.spans, w.layer.attn, c, cos_sin, cache, ds.mla);
  }
  if (nl == 0) return true;
  decoder_layer_cached(xl, s.last, nl, w.layer, c, cos_sin, cache, impl, ds, times, nullptr);
  // The rows in their order (a sequence's last token may be asked for more than once).
  float* sel = grow(s.e, size_t(nrows * D));
  for (int64_t r = 0; r < nrows; ++r) {
    int64_t end = 0, i = 0;
    for (; end + seqs[size_t(i)].len - 1 < rows[r]; ++i) end += seqs[size_t(i)].len;
    std::copy_n(xl + out[size_t(i)] * D, D, sel + r * D);
  }
  float* xn = grow(s.yn, size_t(nrows * D));
  cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), sel, w.head_norm, nrows, D, eps);
  cpu::linear_forward(logits, xn, nrows, w.head);
  return true;
}

}  // namespace

void mtp_forward_cached(float* logits, float* out_hidden, const float* hidden, const int32_t* next,
                        std::span<const SeqSpan> seqs, int64_t N, const int64_t* rows,
                        int64_t nrows, const MtpW<W<float>>& w, const ModelConfig& c,
                        const float* cos_sin, MlaCache& cache, AttnImpl impl, MtpScratch<float>& s,
                        DecoderScratch<float>& ds, ForwardTimes* times,
                        std::vector<Routing>* routes) {
  const int64_t D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  float* e = grow(s.e, size_t(N * D));
  float* cat = grow(s.cat, size_t(N * 2 * D));
  embedding_forward<float>(e, w.embed, next, N);
  concat_inputs(cat, static_cast<float*>(nullptr), static_cast<float*>(nullptr), e, hidden, w, N, D,
                eps);
  float* x = grow(s.x, size_t(N * D));
  cpu::linear_forward(x, cat, N, w.eh_proj);
  if (rows && !out_hidden && !routes &&
      last_tokens_only(x, seqs, N, rows, nrows, logits, w, c, cos_sin, cache, impl, s, ds, times))
    return;
  decoder_layer_cached(x, seqs, N, w.layer, c, cos_sin, cache, impl, ds, times, routes);
  if (out_hidden) std::copy_n(x, N * D, out_hidden);
  float* xn = grow(s.yn, size_t(N * D));
  if (rows) {
    // Only the wanted rows go through the norm and the head (none: the cache entries only).
    if (nrows == 0) return;
    float* sel = grow(s.e, size_t(nrows * D));
    for (int64_t r = 0; r < nrows; ++r) std::copy_n(x + rows[r] * D, D, sel + r * D);
    cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), sel, w.head_norm, nrows, D, eps);
    cpu::linear_forward(logits, xn, nrows, w.head);
    return;
  }
  cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), x, w.head_norm, N, D, eps);
  cpu::linear_forward(logits, xn, N, w.head);
}

#define DSV3_MTP_INSTANTIATE(S)                                                                    \
  template struct MtpActs<S>;                                                                      \
  template double mtp_forward<S>(                                                                  \
      const S*, const int32_t*, int64_t, int64_t, int64_t, const MtpW<W<S>>&, const MtpW<G<S>>*,   \
      S, const ModelConfig&, bool, const float*, MtpActs<S>&, MtpScratch<S>&, DecoderScratch<S>&); \
  template void mtp_backward<S>(S*, const MtpW<G<S>>&, const MtpW<W<S>>&, int64_t, int64_t,        \
                                int64_t, const ModelConfig&, bool, const float*, MtpActs<S>&,      \
                                MtpScratch<S>&, DecoderScratch<S>&);
DSV3_MTP_INSTANTIATE(float)
DSV3_MTP_INSTANTIATE(double)

}  // namespace dsv3::model
