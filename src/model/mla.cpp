// MLA forward, both attention paths; see mla.hpp for the glossary. Follows DeepSeek's reference
// inference code (model.py, MLA.forward): RMSNorm on the q and kv latents, interleaved-pair RoPE
// on the decoupled parts, softmax scale with the YaRN mscale², causal mask.
#include "model/mla.hpp"

#include <algorithm>

#include "backend/cpu/gemm_small.hpp"
#include "backend/cpu/gemv.hpp"
#include "backend/cpu/ops.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"

namespace dsv3::model {

namespace {

// Query rows attended per block, bounding the score buffer to H * kQueryBlock * S floats.
constexpr int64_t kQueryBlock = 256;
// Up to this many new tokens the absorbed path runs attend_absorbed_decode; from there a GEMM
// per head amortizes its call over the tokens.
constexpr int64_t kAbsorbedDecodeTokens = 2;

void attend_naive(float* attn, const float* q, int64_t T, int64_t start, const MlaWeights& w,
                  const ModelConfig& c, const float* latent, const float* pe, MlaScratch& s) {
  const int64_t H = c.num_attention_heads, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim,
                Dv = c.v_head_dim, Dq = Dn + Dr, S = start + T;
  const int64_t Dkv = Dn + Dv;
  const float scale = float(c.softmax_scale());
  // K/V of every attended position, expanded per head: kvfull [S, H*(Dn+Dv)].
  float* kvfull = grow(s.kvfull, size_t(S * H * Dkv));
  cpu::linear_forward(kvfull, latent, S, w.kv_b);
  for (int64_t t0 = 0; t0 < T; t0 += kQueryBlock) {
    const int64_t tb = std::min(kQueryBlock, T - t0);
    float* scores = grow(s.scores, size_t(H * tb * S));
    int64_t* valid = grow(s.valid, size_t(tb));
    for (int64_t t = 0; t < tb; ++t) valid[t] = start + t0 + t + 1;
    parallel_for(H, [&](int64_t hb, int64_t he) {
      for (int64_t h = hb; h < he; ++h) {
        float* sc = scores + h * tb * S;
        const float* qh = q + t0 * H * Dq + h * Dq;
        cpu::gemm_f32(false, true, tb, S, Dn, scale, qh, H * Dq, kvfull + h * Dkv, H * Dkv, 0.0f,
                      sc, S);
        cpu::gemm_f32(false, true, tb, S, Dr, scale, qh + Dn, H * Dq, pe, Dr, 1.0f, sc, S);
        cpu::softmax_rows(sc, tb, S, valid);
        cpu::gemm_f32(false, false, tb, Dv, S, 1.0f, sc, S, kvfull + h * Dkv + Dn, H * Dkv, 0.0f,
                      attn + t0 * H * Dv + h * Dv, H * Dv);
      }
    });
  }
}

void attend_absorbed(float* attn, const float* q, int64_t T, int64_t start, const MlaWeights& w,
                     const ModelConfig& c, const float* latent, const float* pe, MlaScratch& s) {
  const int64_t H = c.num_attention_heads, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim,
                Dv = c.v_head_dim, Dq = Dn + Dr, R = c.kv_lora_rank, S = start + T;
  const int64_t Dkv = Dn + Dv;
  const float scale = float(c.softmax_scale());
  const float* wkv = w.kv_b_f32.data();
  // q_abs[t, h, :] = q_nope[t, h, :] · W_UK[h]  ([Dn] x [Dn, R] -> [R]).
  float* qabs = grow(s.qabs, size_t(T * H * R));
  parallel_for(H, [&](int64_t hb, int64_t he) {
    for (int64_t h = hb; h < he; ++h)
      cpu::gemm_f32(false, false, T, R, Dn, 1.0f, q + h * Dq, H * Dq, wkv + h * Dkv * R, R, 0.0f,
                    qabs + h * R, H * R);
  });
  float* lat = grow(s.lat, size_t(T * H * R));
  for (int64_t t0 = 0; t0 < T; t0 += kQueryBlock) {
    const int64_t tb = std::min(kQueryBlock, T - t0);
    const int64_t rows = tb * H;  // (t, h) pairs share the latent keys
    float* scores = grow(s.scores, size_t(rows * S));
    int64_t* valid = grow(s.valid, size_t(rows));
    for (int64_t t = 0; t < tb; ++t)
      for (int64_t h = 0; h < H; ++h) valid[t * H + h] = start + t0 + t + 1;
    cpu::gemm_f32(false, true, rows, S, R, scale, qabs + t0 * H * R, R, latent, R, 0.0f, scores, S);
    cpu::gemm_f32(false, true, rows, S, Dr, scale, q + t0 * H * Dq + Dn, Dq, pe, Dr, 1.0f, scores,
                  S);
    parallel_for(rows, [&](int64_t b, int64_t e) {
      cpu::softmax_rows(scores + b * S, e - b, S, valid + b);
    });
    cpu::gemm_f32(false, false, rows, R, S, 1.0f, scores, S, latent, R, 0.0f, lat + t0 * H * R, R);
  }
  // attn[t, h, :] = lat[t, h, :] · W_UV[h]ᵀ  ([R] x [R, Dv] -> [Dv]).
  parallel_for(H, [&](int64_t hb, int64_t he) {
    for (int64_t h = hb; h < he; ++h)
      cpu::gemm_f32(false, true, T, Dv, R, 1.0f, lat + h * R, H * R, wkv + (h * Dkv + Dn) * R, R,
                    0.0f, attn + h * Dv, H * Dv);
  });
}

// The absorbed path for a decode step (T ≤ kAbsorbedDecodeTokens): heads are independent from
// the query absorption to the output, so the threads take ranges of heads once and run the
// whole chain on them (one fork/join per layer). The per-head products read kv_b_proj's slices
// as stored (BF16: half the bytes of the FP32 copy; FP8 goes through that copy), and the scores
// and the weighted latent sum use the few-row kernels (a library GEMM call per head costs more
// than the product).
void attend_absorbed_decode(float* attn, const float* q, int64_t T, int64_t start,
                            const MlaWeights& w, const ModelConfig& c, const float* latent,
                            const float* pe, MlaScratch& s) {
  const int64_t H = c.num_attention_heads, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim,
                Dv = c.v_head_dim, Dq = Dn + Dr, R = c.kv_lora_rank, S = start + T;
  const int64_t Dkv = Dn + Dv;
  const float scale = float(c.softmax_scale());
  cpu::WeightView wv = w.kv_b.view();
  if (wv.dtype != DType::F32 && wv.dtype != DType::BF16)
    wv = {DType::F32, H * Dkv, R, w.kv_b_f32.data(), nullptr};
  float* qabs = grow(s.qabs, size_t(T * H * R));      // [T, H, R]
  float* lat = grow(s.lat, size_t(T * H * R));        // [T, H, R]
  float* scores = grow(s.scores, size_t(T * H * S));  // [T, H, S]
  int64_t* valid = grow(s.valid, size_t(T * H));
  for (int64_t i = 0; i < T * H; ++i) valid[i] = start + i / H + 1;
  parallel_for(H, [&](int64_t hb, int64_t he) {
    const int64_t nh = he - hb;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r0 = t * H + hb;  // first (t, h) row of this range
      // q_abs[t, h, :] = q_nope[t, h, :] · W_UK[h]  ([Dn] x [Dn, R] -> [R]).
      for (int64_t h = hb; h < he; ++h)
        cpu::gemv_t_rows(qabs + (t * H + h) * R, q + (t * H + h) * Dq, wv, h * Dkv, Dn);
      float* sc = scores + r0 * S;
      cpu::gemm_small_nt(nh, S, R, scale, qabs + r0 * R, R, latent, R, 0.0f, sc, S);
      cpu::gemm_small_nt(nh, S, Dr, scale, q + r0 * Dq + Dn, Dq, pe, Dr, 1.0f, sc, S);
      cpu::softmax_rows(sc, nh, S, valid + r0);
      cpu::gemm_small_nn(nh, R, S, sc, S, latent, R, lat + r0 * R, R, false);
      // attn[t, h, :] = lat[t, h, :] · W_UV[h]ᵀ  ([R] x [R, Dv] -> [Dv]).
      for (int64_t h = hb; h < he; ++h)
        cpu::gemv_rows(attn + (t * H + h) * Dv, lat + (t * H + h) * R, wv, h * Dkv + Dn,
                       (h + 1) * Dkv);
    }
  });
}
}  // namespace

void mla_forward(float* out, const float* x, int64_t B, int64_t T, int64_t start_pos,
                 const MlaWeights& w, const ModelConfig& c, const float* cos_sin, MlaCache& cache,
                 AttnImpl impl, MlaScratch& s) {
  const int64_t N = B * T, H = c.num_attention_heads, Dn = c.qk_nope_head_dim,
                Dr = c.qk_rope_head_dim, Dv = c.v_head_dim, Dq = Dn + Dr, R = c.kv_lora_rank;
  DSV3_CHECK(B <= cache.slots, "batch {} exceeds the KV cache's {} sequences", B, cache.slots);
  DSV3_CHECK(start_pos + T <= cache.max_seq,
             "positions up to {} exceed the KV cache length {} (max_position_embeddings or "
             "--max-seq)",
             start_pos + T, cache.max_seq);
  int64_t* pos = grow(s.pos, size_t(N));
  for (int64_t i = 0; i < N; ++i) pos[i] = start_pos + i % T;

  // Queries: q [N, H, Dq], rope part rotated.
  float* q = grow(s.q, size_t(N * H * Dq));
  if (c.q_lora_rank) {
    const int64_t Qr = *c.q_lora_rank;
    float* qa = grow(s.qa, size_t(N * Qr));
    cpu::linear_forward(qa, x, N, w.q_a);
    cpu::rmsnorm_forward(qa, nullptr, qa, w.q_a_norm.data(), N, Qr, float(c.rms_norm_eps));
    cpu::linear_forward(q, qa, N, w.q_b);
  } else {
    cpu::linear_forward(q, x, N, w.q);
  }
  cpu::rope_forward(q, N, H, Dq, Dn, Dr, cos_sin, pos);

  // Latent kv [N, R + Dr]: normalize c_kv, rotate k_pe, append both to the cache.
  float* kv = grow(s.kv, size_t(N * (R + Dr)));
  cpu::linear_forward(kv, x, N, w.kv_a);
  cpu::rope_forward(kv, N, 1, R + Dr, R, Dr, cos_sin, pos);
  for (int64_t b = 0; b < B; ++b) {
    float* lat = cache.latent.data() + (b * cache.max_seq + start_pos) * R;
    float* pe = cache.pe.data() + (b * cache.max_seq + start_pos) * Dr;
    const float* src = kv + b * T * (R + Dr);
    cpu::rmsnorm_forward(lat, nullptr, src, w.kv_a_norm.data(), T, R, float(c.rms_norm_eps), R + Dr,
                         R);
    for (int64_t t = 0; t < T; ++t)
      std::copy(src + t * (R + Dr) + R, src + (t + 1) * (R + Dr), pe + t * Dr);
  }

  if (impl == AttnImpl::Auto) impl = T >= kNaiveMinTokens ? AttnImpl::Naive : AttnImpl::Absorbed;
  float* attn = grow(s.attn, size_t(N * H * Dv));
  for (int64_t b = 0; b < B; ++b) {
    const float* lat = cache.latent.data() + b * cache.max_seq * R;
    const float* pe = cache.pe.data() + b * cache.max_seq * Dr;
    const float* qb = q + b * T * H * Dq;
    float* ab = attn + b * T * H * Dv;
    if (impl == AttnImpl::Naive)
      attend_naive(ab, qb, T, start_pos, w, c, lat, pe, s);
    else if (T <= kAbsorbedDecodeTokens)
      attend_absorbed_decode(ab, qb, T, start_pos, w, c, lat, pe, s);
    else
      attend_absorbed(ab, qb, T, start_pos, w, c, lat, pe, s);
  }
  cpu::linear_forward(out, attn, N, w.o);
}

}  // namespace dsv3::model
