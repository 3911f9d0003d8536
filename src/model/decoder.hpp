// One pre-norm decoder layer (DeepSeek-V3 report §2.1): h += MLA(RMSNorm(h));
// h += FFN(RMSNorm(h)) with FFN a dense SwiGLU MLP or DeepSeekMoE. The training forward (saving
// activations) and backward, and the cached step of inference.
//
// Glossary: B batch, T tokens per sequence, N = B·T, D hidden.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.hpp"
#include "model/mla.hpp"
#include "model/mlp.hpp"
#include "model/moe.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

template <typename S>
struct LayerActs {
  std::vector<S> h_in;       // [N, D] residual stream entering the layer
  std::vector<S> attn_rstd;  // [N]
  std::vector<S> h_mid;      // [N, D] residual stream after attention
  std::vector<S> ffn_rstd;   // [N]
  std::vector<S> xn, xn2;    // [N, D] normalized inputs of MLA / FFN (empty with recompute)
  // Under a low-precision storage scope (cpu::saved_act_form) the MLA input is saved in
  // low precision by mla_forward instead of xn, and a dense MLP's input here instead of xn2 (a
  // MoE layer keeps xn2 in FP32: its router's weight gradient, FP32, reads it).
  cpu::SavedAct sxn2;
  MlaActs<S> mla;
  MlpActs<S> mlp;
  MoeActs<S> moe;
  size_t bytes() const;
};

// What the input part of a layer's backward leaves for its weight part.
template <typename S>
struct DecoderGrads {
  MlaGrads<S> mla;
  MoeGrads<S> moe;
  std::vector<S> dout, dg, du;  // dense MLP: output gradient [N, D], gate/up gradients [N, F]
  const S* xn2 = nullptr;       // dense MLP input (FP32), or
  const cpu::SavedAct* sxn2 = nullptr;  // saved in low precision
};

// Buffers shared by all layers (grown once, never shrunk).
template <typename S>
struct DecoderScratch {
  std::vector<S> xn, xn2, tmp, dxn, rstd;  // [N, D] x4, [N]
  std::vector<S> g, u;                     // dense MLP forward of inference [N, F]
  DecoderGrads<S> grads;                   // decoder_layer_backward's, between its two parts
  MlaScratch<S> mla;
  MoeScratch<S> moe;
  MoeActs<S> moe_acts;  // inference: one MoE state for every layer
};

struct DecoderDims {
  int64_t B = 0, T = 0;
  bool recompute = false;
};

// Training: h[N, D] in place, the input of the layer in, its output out.
template <typename S>
void decoder_layer_forward(S* h, const LayerW<W<S>>& w, const ModelConfig& c, const DecoderDims& d,
                           const float* cos_sin, LayerActs<S>& a, DecoderScratch<S>& s);

// Backward, input part: dh[N, D] in place, the gradient of the layer output in, of its input
// out; the RMSNorm weight gradients added into g. Reads h_in, h_mid, both rstd, xn/xn2
// (recomputed from h_in/h_mid and the rstd with recompute) and the MLA/FFN activations; fills gs.
// fuse_expert_weights: the routed experts' weight gradients are added at once (each expert's
// right after its input part, while its data is in cache), leaving the rest to the weight part.
template <typename S>
void decoder_layer_backward_input(S* dh, const LayerW<G<S>>& g, const LayerW<W<S>>& w,
                                  const ModelConfig& c, const DecoderDims& d, const float* cos_sin,
                                  const LayerActs<S>& a, DecoderScratch<S>& s, DecoderGrads<S>& gs,
                                  bool fuse_expert_weights = false);

// Weight part: every matrix gradient of the layer added into g, from gs and the activations.
// With recompute it reads the recomputed inputs in s, so it runs before s serves another layer.
template <typename S>
void decoder_layer_backward_weight(const LayerW<G<S>>& g, const LayerW<W<S>>& w,
                                   const ModelConfig& c, const DecoderDims& d,
                                   const LayerActs<S>& a, DecoderScratch<S>& s,
                                   const DecoderGrads<S>& gs);

// Both parts at once.
template <typename S>
void decoder_layer_backward(S* dh, const LayerW<G<S>>& g, const LayerW<W<S>>& w,
                            const ModelConfig& c, const DecoderDims& d, const float* cos_sin,
                            const LayerActs<S>& a, DecoderScratch<S>& s);

// Wall time of a forward by part, accumulated (for benchmarks and profiling; seconds).
struct ForwardTimes {
  double attention = 0;  // attention blocks (norm excluded)
  double ffn = 0;        // dense MLP and MoE blocks, router included
  double head = 0;       // final norm and LM head
  double total = 0;      // the whole forward
};

// Inference: h[N, D] in place for the N tokens of a ragged batch of sequences (mla.hpp SeqSpan):
// token-wise parts over all N at once, attention per sequence over its cache blocks.
// Adds the parts' times to *times and appends the MoE routing to *routes when non-null.
void decoder_layer_cached(float* h, std::span<const SeqSpan> seqs, int64_t N,
                          const LayerW<W<float>>& w, const ModelConfig& c, const float* cos_sin,
                          MlaCache& cache, AttnImpl impl, DecoderScratch<float>& s,
                          ForwardTimes* times, std::vector<Routing>* routes);

}  // namespace dsv3::model
