// Multi-head Latent Attention for training (DeepSeek-V3 report §2.1.1, eqs. 1-11): forward saving
// activations and the explicit backward. Same math as model/mla.cpp (naive per-head path):
// RMSNorm on the q and kv latents, interleaved-pair RoPE (YaRN table) on the decoupled parts,
// softmax scale with the YaRN mscale², causal softmax over positions 0..T-1 of each sequence.
//
// Glossary: B batch, T tokens per sequence, N = B·T, D hidden, H heads, Qr q_lora_rank (0: direct
// q_proj), R kv_lora_rank, Dn qk_nope_head_dim, Dr qk_rope_head_dim, Dv v_head_dim, Dq = Dn + Dr.
//
// Attention saves only the per-row log-sum-exp of the scores and recomputes the probabilities in
// backward (O(T) memory per head instead of O(T²)).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.hpp"

namespace dsv3::train {

// Pointers into a parameter (or gradient) arena; unused ones are null.
template <typename S>
struct MlaParams {
  S* q_a = nullptr;        // [Qr, D]
  S* q_a_norm = nullptr;   // [Qr]
  S* q_b = nullptr;        // [H*Dq, Qr]
  S* q = nullptr;          // [H*Dq, D] (no q_lora_rank)
  S* kv_a = nullptr;       // [R+Dr, D]
  S* kv_a_norm = nullptr;  // [R]
  S* kv_b = nullptr;       // [H*(Dn+Dv), R]
  S* o = nullptr;          // [D, H*Dv]
};

struct MlaDims {
  int64_t B = 0, T = 0, D = 0, H = 0, Qr = 0, R = 0, Dn = 0, Dr = 0, Dv = 0;
  double eps = 1e-6, scale = 1;
  int64_t N() const { return B * T; }
  int64_t Dq() const { return Dn + Dr; }
  int64_t Dkv() const { return Dn + Dv; }
};
MlaDims mla_dims(const model::ModelConfig& c, int64_t B, int64_t T);

// Activations one layer keeps from forward to backward. The recomputable ones (normalized
// latents and up-projections) live in MlaScratch instead when recompute is on.
template <typename S>
struct MlaActs {
  std::vector<S> qa;       // [N, Qr] q_a_proj output (before q_a_layernorm)
  std::vector<S> qa_rstd;  // [N]
  std::vector<S> kv;       // [N, R+Dr] kv_a_proj output, k_pe part rotated
  std::vector<S> kv_rstd;  // [N]
  std::vector<S> lse;      // [B, H, T] log-sum-exp of each score row
  std::vector<S> attn;     // [N, H*Dv] attention output (o_proj input)
  // Recomputable (empty when recompute is on):
  std::vector<S> qa_n;  // [N, Qr] q latent after RMSNorm
  std::vector<S> q;     // [N, H, Dq] queries, rope part rotated
  std::vector<S> ckv;   // [N, R] kv latent after RMSNorm
  std::vector<S> kvup;  // [N, H, Dn+Dv] kv_b_proj output: k_nope and v per head
  size_t bytes() const;
};

// Buffers shared by all layers (grown once).
template <typename S>
struct MlaScratch {
  std::vector<S> qa_n, q, ckv, kvup;           // recompute targets
  std::vector<S> dattn, dq, dkvup, dckv, dkv;  // gradients
  std::vector<S> dqa, dkpe_heads;              // [N, Qr], [H, N, Dr]
  std::vector<S> tile;                         // per thread: scores/probabilities and dP [2, T, T]
  std::vector<S> rstd;                         // [N] rstd recomputed with the norms
  std::vector<int64_t> pos;                    // [N]
};

// out[N, D] = MLA(x[N, D]); cos_sin: RoPE table [>= T, Dr/2, 2].
template <typename S>
void mla_train_forward(S* out, const S* x, const MlaParams<const S>& w, const MlaDims& d,
                       const float* cos_sin, bool recompute, MlaActs<S>& a, MlaScratch<S>& s);

// dx[N, D] (+= when accumulate) and dw (+=) of the forward above, given dout[N, D].
// Reads the saved x (the layer's input), qa, qa_rstd, kv, kv_rstd, lse, attn; with recompute
// it recomputes qa_n, q, ckv and kvup into the scratch, otherwise reads them from `a`.
template <typename S>
void mla_train_backward(S* dx, const MlaParams<S>& dw, const S* dout, const S* x,
                        const MlaParams<const S>& w, const MlaDims& d, const float* cos_sin,
                        bool recompute, const MlaActs<S>& a, MlaScratch<S>& s,
                        bool accumulate = false);

}  // namespace dsv3::train
