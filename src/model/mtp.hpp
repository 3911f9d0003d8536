// Multi-Token Prediction (DeepSeek-V3 report §2.2, eqs. 21-25): the training forward and backward
// of depth D, and the cached step inference uses (speculative drafts, logits checks). Depth k
// = 1..D runs sequentially: at position i it combines the previous depth's representation h^{k-1}_i
// (depth 0: the main model's output after model.norm, as DeepSeek's released wiring and the
// reference) with the embedding of token t_{i+k}:
//   x_i = eh_proj · [RMSNorm(Emb(t_{i+k}); enorm), RMSNorm(h^{k-1}_i; hnorm)]   (embedding first)
//   h^k = DecoderLayer_k(x)          causal over i = 0 .. T-k-1, RoPE position i
//   logits_i = head(RMSNorm(h^k_i; shared_head.norm))  predicts t_{i+k+1}, i = 0 .. T-k-2
// h^k (before shared_head.norm) feeds depth k+1. The embedding and head are the main model's
// when tied (the paper), else the MTP layer's own copies (the checkpoint stores copies).
//
// Glossary: B batch, T tokens per sequence, Tk = T - k positions at depth k, N = B·Tk, D hidden,
// V vocabulary.
#pragma once
#include <cstdint>
#include <vector>

#include "model/decoder.hpp"
#include "model/embed_head.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

template <typename S>
struct MtpActs {
  std::vector<S> hin;             // [N, D] h^{k-1} rows of positions 0..Tk-1
  std::vector<S> e;               // [N, D] embeddings of t_{i+k}
  std::vector<S> e_rstd, h_rstd;  // [N]
  std::vector<S> cat;             // [N, 2D] eh_proj input (empty with recompute), or
  cpu::SavedAct scat;             // saved in low precision (cpu::saved_act_form)
  std::vector<S> y;               // [N, D] h^k
  std::vector<S> dy;              // [N, D] gradient on h^k (head part, then the next depth's)
  std::vector<int32_t> tok, tgt;  // [N] t_{i+k}, t_{i+k+1} (-1: none)
  LayerActs<S> layer;
  size_t bytes() const;
};

template <typename S>
struct MtpScratch {
  std::vector<S> cat, dcat, yn, dyn, de, dh;  // [N, 2D], [N, 2D], [N, D] x4
  std::vector<S> e, x;                        // inference: [N, D] embeddings, h^k
  std::vector<SeqSpan> spans, last;           // inference: the latent-only and the output spans
  std::vector<int64_t> out_row;               // inference: each logits row's output token
  HeadScratch<S> head;
};

// Forward of depth k from prev [B, T-k+1, D] (h^{k-1}). With g non-null the head/CE backward
// runs at once (scale multiplies the CE sum) and a.dy receives the gradient on h^k.
// Returns the CE sum over the B·(T-k-1) scored positions.
template <typename S>
double mtp_forward(const S* prev, const int32_t* tokens, int64_t B, int64_t T, int64_t k,
                   const MtpW<W<S>>& w, const MtpW<G<S>>* g, S scale, const ModelConfig& c,
                   bool recompute, const float* cos_sin, MtpActs<S>& a, MtpScratch<S>& s,
                   DecoderScratch<S>& ds);

// Backward of depth k: consumes a.dy (in place), adds parameter gradients into g and the
// gradient on h^{k-1} into dprev [B, T-k+1, D]. Reads hin, e, both rstd, cat (recomputed with
// recompute), tok and the decoder layer's activations.
template <typename S>
void mtp_backward(S* dprev, const MtpW<G<S>>& g, const MtpW<W<S>>& w, int64_t B, int64_t T,
                  int64_t k, const ModelConfig& c, bool recompute, const float* cos_sin,
                  MtpActs<S>& a, MtpScratch<S>& s, DecoderScratch<S>& ds);

// Inference, one module, over a ragged batch of sequences (mla.hpp SeqSpan; N tokens): from the
// previous depth's hidden states hidden[N, D] (depth 0: the main model's output after
// model.norm) and the tokens next[N] that follow them, the logits of the token after those:
// logits[nrows, V] of the tokens rows[0..nrows) (rows null: all N). The module's own latent cache
// is `cache`. out_hidden[N, D] (h^k, before shared_head.norm) when non-null; the routing of its
// MoE layer appended to *routes when non-null. When neither is asked for and every row is the
// last token of its sequence (a draft step; nrows 0: the cache entries only), the other tokens go
// only as far as their cache entries (the latents of the layer's normalized input): the layer,
// the norm and the head run on the rows' tokens alone.
void mtp_forward_cached(float* logits, float* out_hidden, const float* hidden, const int32_t* next,
                        std::span<const SeqSpan> seqs, int64_t N, const int64_t* rows,
                        int64_t nrows, const MtpW<W<float>>& w, const ModelConfig& c,
                        const float* cos_sin, MlaCache& cache, AttnImpl impl, MtpScratch<float>& s,
                        DecoderScratch<float>& ds, ForwardTimes* times,
                        std::vector<Routing>* routes);

}  // namespace dsv3::model
