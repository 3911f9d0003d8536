// Multi-head Latent Attention (DeepSeek-V3 report §2.1.1, eqs. 1-11) on a latent KV cache.
//
// Dimension glossary: B batch, T new tokens, S = start_pos + T attended positions, D hidden,
// H heads, R kv_lora_rank, Qr q_lora_rank, Dn qk_nope_head_dim, Dr qk_rope_head_dim,
// Dv v_head_dim, Dq = Dn + Dr.
//
// Per token and layer the cache stores only the normalized latent c_kv [R] and the rotated
// shared rope key k_pe [Dr]. Two paths read it:
//   naive    expands K/V per head through kv_b_proj (long prefill);
//   absorbed folds kv_b_proj into the query and the output so attention runs on the latent
//            (decode; the paper's "absorbed weights").
#pragma once
#include <cstdint>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "model/config.hpp"

namespace dsv3::model {

// Auto: naive for multi-token prefill chunks of at least kNaiveMinTokens (fewer FLOPs per
// attended pair when K/V expansion is amortized over many queries), absorbed otherwise.
enum class AttnImpl { Naive, Absorbed, Auto };
constexpr int64_t kNaiveMinTokens = 32;

struct MlaWeights {
  cpu::LinearWeight q_a;         // [Qr, D]       (q_lora_rank set)
  std::vector<float> q_a_norm;   // [Qr]
  cpu::LinearWeight q_b;         // [H*Dq, Qr]
  cpu::LinearWeight q;           // [H*Dq, D]     (no q_lora_rank)
  cpu::LinearWeight kv_a;        // [R+Dr, D]
  std::vector<float> kv_a_norm;  // [R]
  cpu::LinearWeight kv_b;        // [H*(Dn+Dv), R]
  std::vector<float> kv_b_f32;   // [H*(Dn+Dv), R] effective weight for the absorbed path
  cpu::LinearWeight o;           // [D, H*Dv]
};

// One layer's latent cache for `slots` sequences of up to `max_seq` positions.
struct MlaCache {
  std::vector<float> latent;  // [slots, max_seq, R]
  std::vector<float> pe;      // [slots, max_seq, Dr]
  int64_t slots = 0, max_seq = 0;
};

// Reusable buffers (grown on demand, never shrunk) so steady-state steps do not allocate.
struct MlaScratch {
  std::vector<float> qa, q, kv, attn, kvfull, qabs, scores, lat;
  std::vector<int64_t> pos, valid;
};

// out[B*T, D] = MLA(x[B*T, D]) for tokens at positions start_pos..start_pos+T-1 of cache slots
// 0..B-1; appends their latent entries to the cache first. cos_sin: RoPE table [max_pos, Dr/2, 2].
void mla_forward(float* out, const float* x, int64_t B, int64_t T, int64_t start_pos,
                 const MlaWeights& w, const ModelConfig& c, const float* cos_sin, MlaCache& cache,
                 AttnImpl impl, MlaScratch& s);

}  // namespace dsv3::model
