// Multi-head Latent Attention (DeepSeek-V3 report §2.1.1, eqs. 1-11): the forward of training
// (saving activations), its backward, and the cached forward of inference on the latent KV cache
// (prefill and decode). Follows DeepSeek's reference code (model.py, MLA.forward): RMSNorm on
// the q and kv latents, interleaved-pair RoPE (YaRN table) on the decoupled parts, softmax scale
// with the YaRN mscale², causal mask.
//
// Glossary: B batch, T new tokens per sequence, N = B·T, S = start_pos + T attended positions,
// D hidden, H heads, Qr q_lora_rank (0: direct q_proj), R kv_lora_rank, Dn qk_nope_head_dim,
// Dr qk_rope_head_dim, Dv v_head_dim, Dq = Dn + Dr.
//
// Per token and layer the cache stores only the normalized latent c_kv [R] and the rotated
// shared rope key k_pe [Dr]. Two attention paths read it:
//   naive    expands K/V per head through kv_b_proj (training and long prefill; one function);
//   absorbed folds kv_b_proj into the query and the output so attention runs on the latent
//            (decode; the paper's "absorbed weights").
// Training attention saves only the per-row log-sum-exp of the scores; the backward recomputes
// the probabilities (O(T) memory per head instead of O(T²)).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "backend/cpu/linear_lowp.hpp"
#include "core/zeroed_array.hpp"
#include "model/config.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

// Auto: naive for multi-token prefill chunks of at least kNaiveMinTokens (fewer FLOPs per
// attended pair when K/V expansion is amortized over many queries), absorbed otherwise.
enum class AttnImpl { Naive, Absorbed, Auto };
constexpr int64_t kNaiveMinTokens = 32;

struct MlaDims {
  int64_t B = 0, T = 0, D = 0, H = 0, Qr = 0, R = 0, Dn = 0, Dr = 0, Dv = 0;
  double eps = 1e-6, scale = 1;
  int64_t N() const { return B * T; }
  int64_t Dq() const { return Dn + Dr; }
  int64_t Dkv() const { return Dn + Dv; }
};
MlaDims mla_dims(const ModelConfig& c, int64_t B, int64_t T);

// One layer's latent cache: `slots` blocks of `max_seq` positions each. A sequence's positions
// live in the blocks of its block table (SeqSpan): the slot-contiguous cache of Model::forward
// gives sequence b the one block b; the serving engine's paged cache gives every sequence a
// table of small blocks from a shared pool.
struct MlaCache {
  ZeroedArray<float> latent;  // [slots, max_seq, R]; pages resident once written
  ZeroedArray<float> pe;      // [slots, max_seq, Dr]
  int64_t slots = 0, max_seq = 0;
};

// One sequence of a ragged batch: `len` new tokens at positions start..start+len-1, attending
// positions 0..start+len-1, whose latent entries live in blocks[0..nblocks) of the cache
// (position p in block blocks[p / max_seq] at row p % max_seq).
struct SeqSpan {
  int64_t start = 0, len = 0;
  const int32_t* blocks = nullptr;
  int64_t nblocks = 0;
};

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
  // Low-precision storage (cpu::saved_act_form; float models): the Wgrad inputs saved as
  // SavedAct instead of FP32 — the layer's input x (q_a/q, kv_a; the decoder then keeps no FP32
  // copy), qa_n (q_b), ckv (kv_b) unless recomputed, and attn (o_proj; E5M6 under FP8). The FP32
  // vectors above are then empty.
  cpu::SavedAct sx, sqa_n, sckv, sattn;
  size_t bytes() const;
};

// Buffers shared by all layers; they only grow, so steady-state steps do not allocate.
template <typename S>
struct MlaScratch {
  std::vector<S> qa, qa_n, q, kv, ckv, kvup, attn;  // forward targets (recompute, inference)
  std::vector<S> dattn, dckv, dkpe_heads;           // gradients: [N, H*Dv], [N, R], [H, N, Dr]
  std::vector<S> tile;               // per thread: scores/probabilities (and dP in backward)
  std::vector<S> rstd;               // [N] rstd recomputed with the norms
  std::vector<S> qabs, scores, lat;  // absorbed path
  std::vector<int64_t> pos, valid;   // [N]
  std::vector<S> glat, gpe;          // a paged sequence's latents gathered: [S, R], [S, Dr]
};

// Training: out[N, D] = MLA(x[N, D]) causal over positions 0..T-1 of each of the B sequences;
// cos_sin: RoPE table [>= T, Dr/2, 2].
template <typename S>
void mla_forward(S* out, const S* x, const MlaW<W<S>>& w, const MlaDims& d, const float* cos_sin,
                 bool recompute, MlaActs<S>& a, MlaScratch<S>& s);

// What the input part of the backward leaves for the weight part: the gradients on the outputs
// of the layer's linear maps and pointers to their inputs. The pointers are the layer's saved
// activations, or (with recompute) the recomputed ones in MlaScratch, so with recompute the
// weight part runs before the scratch serves another layer.
template <typename S>
struct MlaGrads {
  std::vector<S> dout;  // [N, D] o_proj output gradient (a copy: the caller's buffer moves on)
  std::vector<S> dkvup, dkv, dq, dqa;  // [N, H*(Dn+Dv)], [N, R+Dr], [N, H*Dq], [N, Qr]
  const S *x = nullptr, *attn = nullptr, *ckv = nullptr, *qa_n = nullptr;
  // The same inputs where they were saved in low precision (else null).
  const cpu::SavedAct *sx = nullptr, *sattn = nullptr, *sckv = nullptr, *sqa_n = nullptr;
};

// Backward of mla_forward, input part: dx[N, D] (+= when accumulate) given dout[N, D], and the
// RMSNorm weight gradients (q_a_layernorm, kv_a_layernorm: no matmul) added into dw. Reads the
// saved x (the layer's input), qa, qa_rstd, kv, kv_rstd, lse, attn; with recompute it recomputes
// qa_n, q, ckv and kvup into the scratch, otherwise reads them from `a`. Fills gs.
template <typename S>
void mla_backward_input(S* dx, const MlaW<G<S>>& dw, const S* dout, const S* x, const MlaW<W<S>>& w,
                        const MlaDims& d, const float* cos_sin, bool recompute, const MlaActs<S>& a,
                        MlaScratch<S>& s, MlaGrads<S>& gs, bool accumulate = false);

// Weight part: the projection weight gradients (q_a/q_b or q, kv_a, kv_b, o) added into dw,
// from what the input part left in gs. Pipeline schedules (DualPipe, zero bubble) may run it
// later.
template <typename S>
void mla_backward_weight(const MlaW<G<S>>& dw, const MlaDims& d, const MlaGrads<S>& gs);

// Inference over a ragged batch: out[N, D] = MLA(x[N, D]) for the N = Σ len tokens of `seqs`
// (rows in order of the sequences); writes their latent entries into the cache through each
// sequence's block table first, then attends each sequence over its positions. The projections
// run over all N tokens at once; the attention path is chosen per sequence (Auto: naive for
// chunks of at least kNaiveMinTokens, absorbed otherwise). cos_sin: RoPE table [max_pos, Dr/2, 2].
void mla_forward_cached(float* out, const float* x, std::span<const SeqSpan> seqs,
                        const MlaW<W<float>>& w, const ModelConfig& c, const float* cos_sin,
                        MlaCache& cache, AttnImpl impl, MlaScratch<float>& s);

// Only the cache entries of mla_forward_cached: the latent kv of the tokens of `seqs` (x their
// normalized inputs), written to their cache rows; no attention, no output.
void mla_write_latents(const float* x, std::span<const SeqSpan> seqs, const MlaW<W<float>>& w,
                       const ModelConfig& c, const float* cos_sin, MlaCache& cache,
                       MlaScratch<float>& s);

}  // namespace dsv3::model
