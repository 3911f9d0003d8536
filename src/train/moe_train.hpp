// DeepSeekMoE for training (DeepSeek-V3 report §2.1.2, eqs. 12-16): router, routed and shared
// experts, forward saving activations and the explicit backward.
//
// Glossary: B batch, T tokens per sequence, N = B·T, D hidden, E routed experts, K experts per
// token, F moe_intermediate_size, Fs = F·n_shared_experts, G groups.
//
// Router as model/moe.cpp (DeepSeek's reference Gate): s = sigmoid(x·Wgᵀ) or softmax; the
// correction bias only selects (group-limited top-K); gate weights are the unbiased scores of
// the chosen experts, normalized when sigmoid, times routed_scaling_factor. Gradients reach the
// router through those gate weights only (not through the selection, never into the bias), plus
// an optional extra gradient on s (the sequence-wise balance loss, report eq. 17-20).
//
// Speed: the N·K (token, expert) pairs are grouped by expert with one counting sort per step;
// the permutation is saved and reused by backward; each expert runs one GEMM per projection
// over all its tokens; no token is dropped.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.hpp"
#include "train/mlp_train.hpp"

namespace dsv3::train {

template <typename S>
struct MoeParams {
  S* router = nullptr;  // [E, D] mlp.gate.weight
  S* bias = nullptr;    // [E] e_score_correction_bias (null: none; read only)
  std::vector<MlpParams<S>> experts;
  MlpParams<S> shared;  // null pointers when n_shared_experts == 0
};

struct MoeDims {
  int64_t N = 0, D = 0, E = 0, K = 0, F = 0, Fs = 0, G = 1, topk_group = 1;
  bool sigmoid = true, grouped = false;
  double routed_scaling_factor = 1;
};
MoeDims moe_dims(const model::ModelConfig& c, int64_t N);

template <typename S>
struct MoeActs {
  std::vector<S> scores;         // [N, E] unbiased affinities s
  std::vector<int32_t> indices;  // [N, K] chosen experts (descending biased score)
  std::vector<S> weights;        // [N, K] gate weights
  std::vector<int32_t> offsets;  // [E+1] pair ranges per expert in the sorted order
  std::vector<int32_t> order;    // [N·K] sorted position -> pair (t·K + k)
  std::vector<int32_t> slot;     // [N·K] pair -> sorted position
  std::vector<S> g, u, act;      // [N·K, F] routed expert activations, sorted order
  std::vector<S> y;              // [N·K, D] routed expert outputs (before gate weights)
  std::vector<S> sg, su, sact;   // [N, Fs] shared expert activations
  std::vector<S> dscores;        // [N, E] extra gradient on s (balance loss), or empty
  std::vector<int64_t> load;     // [E] tokens routed to each expert
  size_t bytes() const;
};

template <typename S>
struct MoeScratch {
  std::vector<S> xg, dyg, dxg;  // [N·K, D]
  std::vector<S> dg, du;        // [max(N·K·F, N·Fs)]
  std::vector<S> dw, ds;        // [N, K], [N, E]
  std::vector<S> sel;           // per thread: [2, E] + [G]
  std::vector<int32_t> isel;    // per thread: [E] + [G]
  std::vector<int32_t> eorder;  // [E] experts by descending load
};

// Router only: scores, indices, weights and load of x[N, D].
template <typename S>
void moe_router_forward(MoeActs<S>& a, const S* x, const MoeParams<const S>& w, const MoeDims& d,
                        MoeScratch<S>& s);

// out[N, D] = Σ_k g_k·expert_k(x) + shared(x).
template <typename S>
void moe_train_forward(S* out, const S* x, const MoeParams<const S>& w, const MoeDims& d,
                       MoeActs<S>& a, MoeScratch<S>& s);

// dx[N, D] (+= when accumulate) and dw (+=; the bias gets nothing) given dout[N, D]. Reads the
// saved x, scores, indices, weights, order/offsets/slot, expert activations and outputs, and
// a.dscores when non-empty (extra gradient on the scores).
template <typename S>
void moe_train_backward(S* dx, const MoeParams<S>& dw, const S* dout, const S* x,
                        const MoeParams<const S>& w, const MoeDims& d, const MoeActs<S>& a,
                        MoeScratch<S>& s, bool accumulate = false);

}  // namespace dsv3::train
