// DeepSeekMoE (DeepSeek-V3 report §2.1.2, eqs. 12-16) and the dense SwiGLU MLP.
//
// Glossary: N tokens, D hidden, E routed experts, K experts per token (num_experts_per_tok),
// G groups (n_group), F moe_intermediate_size, Fs = F * n_shared_experts.
//
// Router: s = sigmoid(x·Wgᵀ) (or softmax), the correction bias b is added for selection only;
// with groups, each group's score is the sum of its two largest biased scores (the maximum
// without bias), the best topk_group groups stay; top-K over the rest. Gate weights are the
// unbiased scores of the chosen experts, normalized (sigmoid), times routed_scaling_factor.
// Shared experts always run. No token is dropped.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "model/config.hpp"

namespace dsv3::model {

struct MlpWeights {
  cpu::LinearWeight gate, up, down;  // [F, D], [F, D], [D, F]
};

struct MoeWeights {
  std::vector<float> router;  // [E, D] FP32: routing decisions are made in FP32
  std::vector<float> bias;    // [E] e_score_correction_bias (empty without noaux_tc)
  std::vector<MlpWeights> experts;
  MlpWeights shared;  // Fs wide; unused when n_shared_experts == 0
};

// What the router decided for N tokens (for tests, load statistics and training).
struct Routing {
  std::vector<int32_t> indices;  // [N, K] chosen experts, by descending biased score
  std::vector<float> weights;    // [N, K] gate weights (normalized, scaled)
  std::vector<float> scores;     // [N, E] unbiased affinities
};

struct MoeScratch {
  std::vector<float> logits, gathered, h1, h2, act, y;
  std::vector<int32_t> order, offsets;
  std::vector<int64_t> jobs;           // expert-parallel decode: the experts to run
  std::vector<MoeScratch> per_thread;  // expert-parallel decode: one per thread
};

// out[N, D] = MLP(x): down(silu(gate(x)) * up(x)).
void mlp_forward(float* out, const float* x, int64_t N, const MlpWeights& w, MoeScratch& s,
                 bool accumulate = false);

// Computes the routing of x[N, D].
void moe_gate_forward(Routing& r, const float* x, int64_t N, const MoeWeights& w,
                      const ModelConfig& c, MoeScratch& s);

// out[N, D] = Σ_k g_k · expert_k(x) + shared(x). `r` receives the routing.
void moe_forward(float* out, const float* x, int64_t N, const MoeWeights& w, const ModelConfig& c,
                 Routing& r, MoeScratch& s);

}  // namespace dsv3::model
