// DeepSeekMoE (DeepSeek-V3 report §2.1.2, eqs. 12-16): router, dispatch / combine, shared and
// routed experts; the forward (inference and training alike, decode included) and the backward.
//
// Glossary: N tokens, D hidden, E routed experts, K experts per token (num_experts_per_tok),
// G groups (n_group), F moe_intermediate_size, Fs = F * n_shared_experts.
//
// Router (DeepSeek's reference Gate, model.py): s = sigmoid(x·Wgᵀ) (or softmax), the correction
// bias b is added for selection only; with groups, each group's score is the sum of its two
// largest biased scores (the maximum without bias), the best topk_group groups stay; top-K over
// the rest. Gate weights are the unbiased scores of the chosen experts, normalized (sigmoid),
// times routed_scaling_factor. Gradients reach the router through the gate weights only (not the
// selection, never the bias), plus an optional extra gradient on s (the sequence-wise balance
// loss, report eqs. 17-20). Shared experts always run. No token is dropped.
//
// Dispatch: the N·K (token, expert) pairs are grouped by expert with one counting sort; each
// expert runs one GEMM per projection over all its tokens; combine sums in token order
// (deterministic). Backward reuses the permutation.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/comm.hpp"
#include "dist/expert_dispatch.hpp"
#include "model/config.hpp"
#include "model/mlp.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

// What the router decided for N tokens (for tests and load statistics).
struct Routing {
  std::vector<int32_t> indices;  // [N, K] chosen experts, by descending biased score
  std::vector<float> weights;    // [N, K] gate weights (normalized, scaled)
  std::vector<float> scores;     // [N, E] unbiased affinities
};

// One MoE call's state: the routing, the dispatch plan and the expert activations (saved for the
// backward in training; scratch reused by every layer in inference). Buffers only grow.
template <typename S>
struct MoeActs {
  std::vector<S> scores;         // [N, E] unbiased affinities s
  std::vector<int32_t> indices;  // [N, K] chosen experts (descending biased score)
  std::vector<S> weights;        // [N, K] gate weights
  std::vector<int32_t> offsets;  // [E+1] pair ranges per expert in the sorted order
  std::vector<int32_t> order;    // [pairs] sorted position -> slot (row·K + k)
  std::vector<int32_t> slot;     // [rows·K] slot -> sorted position, -1: not run here
  std::vector<int64_t> cursor;   // [E] counting-sort cursors
  std::vector<S> g, u;           // [N·K, F] routed experts' SwiGLU inputs, sorted order
  std::vector<S> y;              // [N·K, D] routed expert outputs (before gate weights)
  std::vector<S> sg, su;         // [N, Fs] shared experts' SwiGLU inputs (mlp.hpp: the SwiGLU
                                 // outputs are recomputed in backward)
  std::vector<S> dscores;        // [N, E] extra gradient on s (balance loss), or empty
  std::vector<int64_t> load;     // [E] tokens routed to each expert
  // Expert parallelism (FP32): the dispatch plan, the rows received and their experts' sums.
  dist::ExpertPlan plan;
  std::vector<S> xr, yr;  // [R, D]
  size_t bytes() const;
  void routing(Routing& r, int64_t N, int64_t K, int64_t E) const;  // copies the decisions
};

struct MoeDims {
  int64_t N = 0, D = 0, E = 0, K = 0, F = 0, Fs = 0, G = 1, topk_group = 1;
  bool sigmoid = true, grouped = false;
  double routed_scaling_factor = 1;
};
MoeDims moe_dims(const ModelConfig& c, int64_t N);

// Node-limited routing (DeepSeek-V3 report §2.1.2, §3.2.2): the E routed experts fall into
// `nodes` equal consecutive groups (the experts of the expert-parallel ranks of one node); each
// token's K experts come from at most `max_nodes` nodes, ranked by the sum of the K/max_nodes
// highest biased affinities of their experts. The group-limited routing of the config (n_group,
// topk_group) is the same mechanism; the node limit, when set, takes its place. Off (0) or
// max_nodes >= nodes: no limit from here.
struct NodeLimit {
  int64_t nodes = 0, max_nodes = 0;
  bool active() const { return nodes > 1 && max_nodes > 0 && max_nodes < nodes; }
};

template <typename S>
struct MoeScratch {
  std::vector<S> xg, dxg;       // [N·K, D] gathered inputs, input gradients
  std::vector<S> dw;            // [N, K] gate-weight gradients
  std::vector<S> sel;           // [N, E + G] biased scores and group scores per token
  std::vector<int32_t> isel;    // [N, E + G] orders per token
  std::vector<int32_t> eorder;  // [E] experts by descending load
  std::vector<int64_t> jobs;    // decode: shared (-1) and the active routed experts
  std::vector<S> act;           // one-token decode: [Fs + pairs·F] SwiGLU outputs (routed_forward)
  // The expert-parallel group the MoE layers of this model run on (dist/expert_dispatch.hpp):
  // null or one rank, every expert runs here; else rank r runs experts [r·E/P, (r+1)·E/P).
  dist::Comm* ep = nullptr;
  NodeLimit node_limit;                     // see NodeLimit
  dist::DispatchStats* dispatch = nullptr;  // adds every dispatch's volume when set
};

// Router only: scores, indices, weights and load of x[N, D].
template <typename S>
void moe_router_forward(MoeActs<S>& a, const S* x, const MoeW<W<S>>& w, const MoeDims& d,
                        MoeScratch<S>& s);

// out[N, D] = Σ_k g_k·expert_k(x) + shared(x).
template <typename S>
void moe_forward(S* out, const S* x, const MoeW<W<S>>& w, const MoeDims& d, MoeActs<S>& a,
                 MoeScratch<S>& s);

// What the input part of the backward leaves for the weight part.
template <typename S>
struct MoeGrads {
  std::vector<S> dout;      // [N, D] output gradient (a copy: the caller's buffer moves on)
  std::vector<S> dyg, xg;   // [N·K, D] routed experts' output gradients and inputs, sorted order
  std::vector<S> dg, du;    // [N·K, F] routed experts' gate/up gradients
  std::vector<S> sdg, sdu;  // [N, Fs] shared experts' gate/up gradients
  std::vector<S> ds;        // [N, E] router logit gradients
  std::vector<S> dyr, dxr, dwr;  // expert parallelism: [R, D], [R, D], [R, K] of received rows
  const S* x = nullptr;          // the layer's input
  bool experts_done = false;  // the routed experts' weight gradients were fused into the input part
};

// Backward of moe_forward, input part: dx[N, D] (+= when accumulate) given dout[N, D]. Reads the
// saved x, scores, indices, weights, order/offsets/slot and the expert activations and outputs,
// and a.dscores when non-empty (an extra gradient on the scores). Fills gs.
// With fuse_expert_weights, the routed experts' weight gradients are added there at once, each
// right after its input part (data still in cache); the weight part then does the rest.
template <typename S>
void moe_backward_input(S* dx, const S* dout, const S* x, const MoeW<W<S>>& w, const MoeDims& d,
                        const MoeActs<S>& a, MoeScratch<S>& s, MoeGrads<S>& gs,
                        bool accumulate = false, const MoeW<G<S>>* fuse_expert_weights = nullptr);

// Weight part: expert (routed and shared) and router weight gradients added into dw (the
// correction bias gets nothing), from gs and the saved activations.
template <typename S>
void moe_backward_weight(const MoeW<G<S>>& dw, const MoeDims& d, const MoeActs<S>& a,
                         MoeScratch<S>& s, const MoeGrads<S>& gs);

// The sequence-wise balance loss (eqs. 17-20), averaged over the B sequences:
//   f_i  = E/(K·T) · #{t : i ∈ TopK_t}              (held constant: no gradient)
//   s'_{i,t} = s_{i,t} / Σ_j s_{j,t}
//   P_i  = (1/T) · Σ_t s'_{i,t}
//   L    = (1/B) · Σ_b α · Σ_i f_i · P_i
// scores [N, E] are the unbiased affinities s (sigmoid or softmax outputs, all > 0), indices
// [N, K] the selected experts. When dscores [N, E] is non-null, dL/dscores (through the
// normalization s') is ADDED into it. Returns L.
float balance_loss(const float* scores, const int32_t* indices, int64_t B, int64_t T, int64_t E,
                   int64_t K, float alpha, float* dscores);

}  // namespace dsv3::model
