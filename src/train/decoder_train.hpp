// One pre-norm decoder layer for training (DeepSeek-V3 report §2.1): h += MLA(RMSNorm(h));
// h += FFN(RMSNorm(h)) with FFN a dense SwiGLU MLP or DeepSeekMoE. Binds the layer's parameters
// (and gradients) in the flat arenas by their HF names.
//
// Glossary: B batch, T tokens per sequence, N = B·T, D hidden.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "train/mla_train.hpp"
#include "train/moe_train.hpp"
#include "train/params.hpp"

namespace dsv3::train {

template <typename S>
struct LayerParams {
  S* attn_norm = nullptr;  // [D] input_layernorm
  S* ffn_norm = nullptr;   // [D] post_attention_layernorm
  MlaParams<S> attn;
  bool moe = false;
  MlpParams<S> mlp;  // dense layers
  MoeParams<S> moe_p;
};

// Pointers of layer `layer` (HF prefix model.layers.{layer}.) into an arena laid out by
// `layout`; P is S or const S.
template <typename P>
LayerParams<P> bind_layer(const ParamLayout& layout, P* base, const model::ModelConfig& c,
                          int64_t layer, bool moe);

template <typename S>
struct LayerActs {
  std::vector<S> h_in;       // [N, D] residual stream entering the layer
  std::vector<S> attn_rstd;  // [N]
  std::vector<S> h_mid;      // [N, D] residual stream after attention
  std::vector<S> ffn_rstd;   // [N]
  std::vector<S> xn, xn2;    // [N, D] normalized inputs of MLA / FFN (empty with recompute)
  MlaActs<S> mla;
  MlpActs<S> mlp;
  MoeActs<S> moe;
  size_t bytes() const;
};

template <typename S>
struct DecoderScratch {
  std::vector<S> xn, tmp, dxn, rstd;  // [N, D], [N, D], [N, D], [N]
  std::vector<S> dg, du;              // dense MLP backward [N, F]
  MlaScratch<S> mla;
  MoeScratch<S> moe;
};

struct DecoderDims {
  int64_t B = 0, T = 0;
  bool recompute = false;
};

// h[N, D] in place: input of the layer in, output out.
template <typename S>
void decoder_layer_forward(S* h, const LayerParams<const S>& w, const model::ModelConfig& c,
                           const DecoderDims& d, const float* cos_sin, LayerActs<S>& a,
                           DecoderScratch<S>& s);

// dh[N, D] in place: gradient of the layer output in, of its input out; parameter gradients
// added into g. Reads h_in, h_mid, both rstd, xn/xn2 (recomputed from h_in/h_mid and the rstd
// with recompute) and the MLA/FFN activations.
template <typename S>
void decoder_layer_backward(S* dh, const LayerParams<S>& g, const LayerParams<const S>& w,
                            const model::ModelConfig& c, const DecoderDims& d, const float* cos_sin,
                            const LayerActs<S>& a, DecoderScratch<S>& s);

}  // namespace dsv3::train
