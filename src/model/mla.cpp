// MLA: the projections, the naive attention (training and long prefill), the absorbed attention
// of decode, and the backward; see mla.hpp for the glossary.
#include "model/mla.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "backend/cpu/gemm_small.hpp"
#include "backend/cpu/gemv.hpp"
#include "backend/cpu/gemv_fp8.hpp"
#include "backend/cpu/ops.hpp"
#include "backend/cpu/vmath.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"
#include "model/mlp.hpp"

namespace dsv3::model {

MlaDims mla_dims(const ModelConfig& c, int64_t B, int64_t T) {
  MlaDims d;
  d.B = B;
  d.T = T;
  d.D = c.hidden_size;
  d.H = c.num_attention_heads;
  d.Qr = c.q_lora_rank ? *c.q_lora_rank : 0;
  d.R = c.kv_lora_rank;
  d.Dn = c.qk_nope_head_dim;
  d.Dr = c.qk_rope_head_dim;
  d.Dv = c.v_head_dim;
  d.eps = c.rms_norm_eps;
  d.scale = c.softmax_scale();
  return d;
}

template <typename S>
size_t MlaActs<S>::bytes() const {
  size_t n = qa.size() + qa_rstd.size() + kv.size() + kv_rstd.size() + lse.size() + attn.size() +
             qa_n.size() + q.size() + ckv.size() + kvup.size();
  return n * sizeof(S) + sx.bytes() + sqa_n.bytes() + sckv.bytes() + sattn.bytes();
}

namespace {

// Query rows per attention task, bounding a score tile to kQueryBlock * S values.
constexpr int64_t kQueryBlock = 256;
// Up to this many new tokens the absorbed path runs attend_absorbed_decode; from there a GEMM
// per head amortizes its call over the tokens.
constexpr int64_t kAbsorbedDecodeTokens = 2;

// ---- Projections (eqs. 1-5 and 6-9), shared by every path ----

// The q latent: qa = x·W_DQᵀ [N, Qr] and qa_n = RMSNorm(qa) (rstd saved when non-null).
template <typename S>
void q_latent(S* qa, S* qa_n, S* rstd, const S* x, const MlaW<W<S>>& w, const MlaDims& d) {
  cpu::linear_forward(qa, x, d.N(), w.q_a);
  cpu::rmsnorm_forward(qa_n, rstd, qa, w.q_a_norm, d.N(), d.Qr, S(d.eps));
}

// q [N, H, Dq] with the rope part rotated, from qa_n (q_lora) or x (direct q_proj).
template <typename S>
void queries(S* q, const S* x, const S* qa_n, const MlaW<W<S>>& w, const MlaDims& d,
             const float* cos_sin, const int64_t* pos) {
  if (d.Qr)
    cpu::linear_forward(q, qa_n, d.N(), w.q_b);
  else
    cpu::linear_forward(q, x, d.N(), w.q);
  cpu::rope_forward(q, d.N(), d.H, d.Dq(), d.Dn, d.Dr, cos_sin, pos);
}

// kv [N, R+Dr] = x·W_DKVᵀ with the shared k_pe part rotated.
template <typename S>
void kv_latent(S* kv, const S* x, const MlaW<W<S>>& w, const MlaDims& d, const float* cos_sin,
               const int64_t* pos) {
  cpu::linear_forward(kv, x, d.N(), w.kv_a);
  cpu::rope_forward(kv, d.N(), 1, d.R + d.Dr, d.R, d.Dr, cos_sin, pos);
}

// ---- Naive attention ----

// attn[T, H*Dv] of B sequences (rows b·T..) for queries q [T, H, Dq] at positions
// start..start+T-1 over the S = start + T positions of each sequence: kvup [S, H, Dn+Dv] (k_nope
// and v per head, rows b·S..), kpe [S, ld_pe] (rows b·S..). lse [B, H, T] saved when non-null.
template <typename S>
void attend_naive(S* attn, S* lse, const S* q, int64_t B, int64_t T, int64_t start, const S* kvup,
                  const S* kpe, int64_t ld_pe, const MlaDims& d, MlaScratch<S>& s) {
  ProfileScope ps(&StepProfile::attention_s);
  GroupedScope grouped;
  const int64_t H = d.H, Dq = d.Dq(), Dkv = d.Dkv(), Dv = d.Dv, Sk = start + T;
  const int64_t blocks = (T + kQueryBlock - 1) / kQueryBlock, tbmax = std::min(T, kQueryBlock);
  S* tiles = grow(s.tile, size_t(omp_get_max_threads() * tbmax * Sk));
  parallel_for(B * H * blocks, [&](int64_t tb, int64_t te) {
    S* sc = tiles + omp_get_thread_num() * tbmax * Sk;
    for (int64_t task = tb; task < te; ++task) {
      const int64_t b = task / (H * blocks), h = task / blocks % H,
                    t0 = task % blocks * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, T - t0), keys = start + t0 + rows;
      const S* qh = q + (b * T + t0) * H * Dq + h * Dq;
      const S* kvb = kvup + b * Sk * H * Dkv + h * Dkv;
      cpu::gemm(false, true, rows, keys, d.Dn, S(d.scale), qh, H * Dq, kvb, H * Dkv, S(0), sc,
                keys);
      cpu::gemm(false, true, rows, keys, d.Dr, S(d.scale), qh + d.Dn, H * Dq, kpe + b * Sk * ld_pe,
                ld_pe, S(1), sc, keys);
      for (int64_t t = 0; t < rows; ++t) {
        S* p = sc + t * keys;
        const int64_t valid = start + t0 + t + 1;  // causal: positions 0..start+t0+t
        S mx = p[0];
        for (int64_t j = 1; j < valid; ++j) mx = std::max(mx, p[j]);
        const S sum = cpu::exp_shift_sum(p, p, valid, mx);
        const S inv = S(1) / sum;
        for (int64_t j = 0; j < valid; ++j) p[j] *= inv;
        std::fill(p + valid, p + keys, S(0));
        if (lse) lse[(b * H + h) * T + t0 + t] = mx + std::log(sum);
      }
      cpu::gemm(false, false, rows, Dv, keys, S(1), sc, keys, kvb + d.Dn, H * Dkv, S(0),
                attn + (b * T + t0) * H * Dv + h * Dv, H * Dv);
    }
  });
}

// Backward of attend_naive with start = 0: dq [N, H, Dq], dkvup [N, H, Dn+Dv] (overwritten) and
// the per-head k_pe gradients dkpe_heads [H, N, Dr]. Recomputes the probabilities from lse.
template <typename S>
void attend_naive_backward(S* dq, S* dkvup, S* dkpe_heads, const S* dattn, const S* lse, const S* q,
                           const S* kvup, const S* kv, const MlaDims& d, MlaScratch<S>& s) {
  ProfileScope ps(&StepProfile::attention_s);
  GroupedScope grouped;
  const int64_t T = d.T, H = d.H, Dq = d.Dq(), Dkv = d.Dkv(), Dv = d.Dv, Dn = d.Dn, Dr = d.Dr,
                R = d.R, N = d.N();
  S* tiles = grow(s.tile, size_t(omp_get_max_threads() * 2 * T * T));
  parallel_for(d.B * H, [&](int64_t tb, int64_t te) {
    S* p = tiles + omp_get_thread_num() * 2 * T * T;
    S* dp = p + T * T;
    for (int64_t task = tb; task < te; ++task) {
      const int64_t b = task / H, h = task % H;
      const S* qh = q + b * T * H * Dq + h * Dq;
      const S* kvb = kvup + b * T * H * Dkv + h * Dkv;
      const S* kpe = kv + b * T * (R + Dr) + R;
      cpu::gemm(false, true, T, T, Dn, S(d.scale), qh, H * Dq, kvb, H * Dkv, S(0), p, T);
      cpu::gemm(false, true, T, T, Dr, S(d.scale), qh + Dn, H * Dq, kpe, R + Dr, S(1), p, T);
      const S* l = lse + (b * H + h) * T;
      for (int64_t t = 0; t < T; ++t) {
        S* r = p + t * T;
        cpu::exp_shift_sum(r, r, t + 1, l[t]);
        std::fill(r + t + 1, r + T, S(0));
      }
      const S* dO = dattn + b * T * H * Dv + h * Dv;
      S* dkvb = dkvup + b * T * H * Dkv + h * Dkv;
      S* dqh = dq + b * T * H * Dq + h * Dq;
      // dP = dO·Vᵀ, dV = Pᵀ·dO
      cpu::gemm(false, true, T, T, Dv, S(1), dO, H * Dv, kvb + Dn, H * Dkv, S(0), dp, T);
      cpu::gemm(true, false, T, Dv, T, S(1), p, T, dO, H * Dv, S(0), dkvb + Dn, H * Dkv);
      // dS = P ∘ (dP − rowsum(P ∘ dP)) · scale
      for (int64_t t = 0; t < T; ++t) {
        const S* pr = p + t * T;
        S* dr = dp + t * T;
        S dot = 0;
        for (int64_t j = 0; j <= t; ++j) dot += pr[j] * dr[j];
        for (int64_t j = 0; j <= t; ++j) dr[j] = pr[j] * (dr[j] - dot) * S(d.scale);
        std::fill(dr + t + 1, dr + T, S(0));
      }
      cpu::gemm(false, false, T, Dn, T, S(1), dp, T, kvb, H * Dkv, S(0), dqh, H * Dq);
      cpu::gemm(false, false, T, Dr, T, S(1), dp, T, kpe, R + Dr, S(0), dqh + Dn, H * Dq);
      cpu::gemm(true, false, T, Dn, T, S(1), dp, T, qh, H * Dq, S(0), dkvb, H * Dkv);
      cpu::gemm(true, false, T, Dr, T, S(1), dp, T, qh + Dn, H * Dq, S(0),
                dkpe_heads + h * N * Dr + b * T * Dr, Dr);
    }
  });
}

// ---- Absorbed attention (inference) ----

// Rows [r0, r1) of kv_b_proj as FP32: the stored rows of an F32 weight, else this thread's
// widened copy of them (valid until its next call). No model-wide FP32 copy is kept.
const float* kv_b_rows_f32(const cpu::WeightView& w, int64_t r0, int64_t r1) {
  if (w.dtype == DType::F32) return static_cast<const float*>(w.data) + r0 * w.cols;
  thread_local std::vector<float> buf;
  if (buf.size() < size_t((r1 - r0) * w.cols)) buf.resize(size_t((r1 - r0) * w.cols));
  if (w.dtype == DType::BF16)
    cpu::bf16_rows_to_f32(buf.data(), w, r0, r1);
  else
    cpu::fp8_rows_to_f32(buf.data(), w, r0, r1);
  return buf.data();
}

void attend_absorbed(float* attn, const float* q, int64_t T, int64_t start, const MlaW<W<float>>& w,
                     const MlaDims& d, const float* latent, const float* pe, MlaScratch<float>& s) {
  const int64_t H = d.H, Dn = d.Dn, Dr = d.Dr, Dv = d.Dv, Dq = d.Dq(), R = d.R, S = start + T;
  const int64_t Dkv = d.Dkv();
  const float scale = float(d.scale);
  const cpu::WeightView& wv = w.kv_b.view();
  // q_abs[t, h, :] = q_nope[t, h, :] · W_UK[h]  ([Dn] x [Dn, R] -> [R]).
  float* qabs = grow(s.qabs, size_t(T * H * R));
  parallel_for(H, [&](int64_t hb, int64_t he) {
    for (int64_t h = hb; h < he; ++h)
      cpu::gemm_f32(false, false, T, R, Dn, 1.0f, q + h * Dq, H * Dq,
                    kv_b_rows_f32(wv, h * Dkv, h * Dkv + Dn), R, 0.0f, qabs + h * R, H * R);
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
      cpu::gemm_f32(false, true, T, Dv, R, 1.0f, lat + h * R, H * R,
                    kv_b_rows_f32(wv, h * Dkv + Dn, (h + 1) * Dkv), R, 0.0f, attn + h * Dv, H * Dv);
  });
}

// The absorbed path for a decode step (T ≤ kAbsorbedDecodeTokens): heads are independent from
// the query absorption to the output, so the threads take ranges of heads once and run the
// whole chain on them (one fork/join per layer). The per-head products read kv_b_proj's slices
// as stored (F32, BF16 or FP8 codes: gemv_rows / gemv_t_rows), and the scores
// and the weighted latent sum use the few-row kernels (a library GEMM call per head costs more
// than the product).
// A sequence's cached latents [S, R] and k_pe [S, Dr]: blocks of bt positions at
// lat + blocks[j]·bt·R and pe + blocks[j]·bt·Dr (contiguous latents: one block of bt ≥ S).
struct LatentBlocks {
  const float *lat, *pe;
  const int32_t* blocks;
  int64_t bt;
};

// Heads [hb, he) of one sequence's absorbed decode, on the calling thread. qabs, lat [T, H, R],
// scores [T, H, S] and valid [T, H] are the sequence's own scratch. Without `absorb` the caller
// has filled qabs and applies W_UV to lat itself (attend_decode_batch: for all sequences at once).
// The scores and the weighted latent sum run block by block on the cache in place; every score is
// one dot product (latent and rope parts in one sum, gemm_small_nt2) and every weighted sum one
// FMA chain over the positions in order, whatever the blocks (gemm_small.hpp), so the results do
// not depend on them.
// Asks for rows [r0, r1) of kv_b_proj ahead of their per-head product. A head's slices (W_UK or
// W_UV: 64 rows of 256 here, 16 KiB as FP8) are too short for the hardware prefetchers, so every
// head's product waited for its rows from DRAM one miss at a time: on the FP8 bench model they
// took ~1 ms of a 14 ms step for 6 MB (perf, 2026-12-07).
void prefetch_rows(const cpu::WeightView& w, int64_t r0, int64_t r1) {
  const size_t row = size_t(w.cols) * dtype_size(w.dtype);
  const char* p = static_cast<const char*>(w.data) + size_t(r0) * row;
  const char* e = static_cast<const char*>(w.data) + size_t(r1) * row;
  for (; p < e; p += 64) _mm_prefetch(p, _MM_HINT_T0);
}

void absorbed_decode_heads(float* attn, const float* q, int64_t T, int64_t start,
                           const cpu::WeightView& wv, const MlaDims& d, const LatentBlocks& kv,
                           float* qabs, float* lat, float* scores, const int64_t* valid, int64_t hb,
                           int64_t he, bool absorb = true) {
  const int64_t H = d.H, Dn = d.Dn, Dr = d.Dr, Dv = d.Dv, Dq = d.Dq(), R = d.R, S = start + T;
  const int64_t Dkv = d.Dkv(), nh = he - hb, bt = kv.bt;
  const float scale = float(d.scale);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t r0 = t * H + hb;  // first (t, h) row of this range
    // q_abs[t, h, :] = q_nope[t, h, :] · W_UK[h]  ([Dn] x [Dn, R] -> [R]).
    // Each head's slice is asked for one head ahead; after W_UK the first W_UV slice, which then
    // arrives while the scores are computed.
    if (absorb) {
      prefetch_rows(wv, hb * Dkv, hb * Dkv + Dn);
      for (int64_t h = hb; h < he; ++h) {
        const int64_t next = h + 1 < he ? (h + 1) * Dkv : hb * Dkv + Dn;
        prefetch_rows(wv, next, next + Dn);
        cpu::gemv_t_rows(qabs + (t * H + h) * R, q + (t * H + h) * Dq, wv, h * Dkv, Dn);
      }
    }
    float* sc = scores + r0 * S;
    for (int64_t j = 0; j * bt < S; ++j) {
      const int64_t n = std::min(bt, S - j * bt), blk = kv.blocks[j];
      cpu::gemm_small_nt2(nh, n, scale, R, qabs + r0 * R, R, kv.lat + blk * bt * R, R, Dr,
                          q + r0 * Dq + Dn, Dq, kv.pe + blk * bt * Dr, Dr, sc + j * bt, S);
    }
    cpu::softmax_rows(sc, nh, S, valid + r0);
    for (int64_t j = 0; j * bt < S; ++j) {
      const int64_t n = std::min(bt, S - j * bt), blk = kv.blocks[j];
      cpu::gemm_small_nn(nh, R, n, sc + j * bt, S, kv.lat + blk * bt * R, R, lat + r0 * R, R,
                         j > 0);
    }
    // attn[t, h, :] = lat[t, h, :] · W_UV[h]ᵀ  ([R] x [R, Dv] -> [Dv]).
    if (absorb)
      for (int64_t h = hb; h < he; ++h) {
        if (h + 1 < he) prefetch_rows(wv, (h + 1) * Dkv + Dn, (h + 2) * Dkv);
        cpu::gemv_rows(attn + (t * H + h) * Dv, lat + (t * H + h) * R, wv, h * Dkv + Dn,
                       (h + 1) * Dkv);
      }
  }
}

void attend_absorbed_decode(float* attn, const float* q, int64_t T, int64_t start,
                            const MlaW<W<float>>& w, const MlaDims& d, const float* latent,
                            const float* pe, MlaScratch<float>& s) {
  const int64_t H = d.H, R = d.R, S = start + T;
  const cpu::WeightView& wv = w.kv_b.view();
  float* qabs = grow(s.qabs, size_t(T * H * R));      // [T, H, R]
  float* lat = grow(s.lat, size_t(T * H * R));        // [T, H, R]
  float* scores = grow(s.scores, size_t(T * H * S));  // [T, H, S]
  int64_t* valid = grow(s.valid, size_t(T * H));
  for (int64_t i = 0; i < T * H; ++i) valid[i] = start + i / H + 1;
  static constexpr int32_t kOneBlock = 0;
  const LatentBlocks kv{latent, pe, &kOneBlock, S};
  parallel_for(H, [&](int64_t hb, int64_t he) {
    absorbed_decode_heads(attn, q, T, start, wv, d, kv, qabs, lat, scores, valid, hb, he);
  });
}

// The decode steps of several sequences at once (every one T ≤ kAbsorbedDecodeTokens, absorbed):
// the query absorption of all tokens head by head in one parallel region, then every (sequence,
// head)'s scores and weighted latent sum on its paged latents in place (no gathered copy), and
// W_UV of all tokens head by head, instead of two regions per sequence (an OpenMP fork/join each,
// and a sequence's 16 heads are too little work to keep both threads busy between them). Head by
// head, each W_UK / W_UV slice of kv_b is read once per step for all tokens; per sequence, every
// one of them re-read all of kv_b (1 MiB per layer in the bench model, a core's whole L2). The
// products are the per-sequence path's (gemv_t_rows_m and gemv_rows_m compute each output as
// gemv_t_rows and gemv_rows do), so a sequence's attention is bit for bit its decode alone.
void attend_decode_batch(float* attn, const float* q, std::span<const SeqSpan> seqs,
                         const MlaW<W<float>>& w, const ModelConfig& c, const MlaCache& cache,
                         MlaScratch<float>& s) {
  const MlaDims d = mla_dims(c, 1, 1);
  const int64_t H = d.H, R = d.R, Dq = d.Dq(), Dv = d.Dv, bt = cache.max_seq;
  const int64_t ns = int64_t(seqs.size());
  // Per sequence: first token, offsets into the scores and the valid rows.
  thread_local std::vector<int64_t> off;
  off.assign(size_t(3 * (ns + 1)), 0);
  int64_t* tok0 = off.data();
  int64_t* sc0 = tok0 + ns + 1;
  int64_t* val0 = sc0 + ns + 1;
  for (int64_t i = 0; i < ns; ++i) {
    const SeqSpan& sq = seqs[size_t(i)];
    const int64_t S = sq.start + sq.len;
    tok0[i + 1] = tok0[i] + sq.len;
    sc0[i + 1] = sc0[i] + sq.len * H * S;
    val0[i + 1] = val0[i] + sq.len * H;
  }
  const int64_t N = tok0[ns];
  float* qabs = grow(s.qabs, size_t(N * H * R));
  float* lat = grow(s.lat, size_t(N * H * R));
  float* scores = grow(s.scores, size_t(sc0[ns]));
  int64_t* valid = grow(s.valid, size_t(val0[ns]));
  for (int64_t i = 0; i < ns; ++i)
    for (int64_t k = 0; k < val0[i + 1] - val0[i]; ++k)
      valid[val0[i] + k] = seqs[size_t(i)].start + k / H + 1;
  const cpu::WeightView& wv = w.kv_b.view();
  const int64_t Dn = d.Dn, Dkv = d.Dkv();
  // q_abs of every token, head by head: a head's W_UK slice is read once for all N tokens (per
  // sequence, the 16 sequences of a step re-read all of kv_b, which does not stay in L2).
  parallel_for(H, [&](int64_t hb, int64_t he) {
    for (int64_t h = hb; h < he; ++h)
      cpu::gemv_t_rows_m(qabs + h * R, H * R, q + h * Dq, H * Dq, N, wv, h * Dkv, Dn);
  });
  parallel_for(ns * H, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1;) {
      const int64_t i = u / H, hb = u % H, he = std::min(H, hb + (u1 - u));
      const SeqSpan& sq = seqs[size_t(i)];
      const LatentBlocks kv{cache.latent.data(), cache.pe.data(), sq.blocks, bt};
      const int64_t t0 = tok0[i];
      absorbed_decode_heads(attn + t0 * H * Dv, q + t0 * H * Dq, sq.len, sq.start, wv, d, kv,
                            qabs + t0 * H * R, lat + t0 * H * R, scores + sc0[i], valid + val0[i],
                            hb, he, false);
      u += he - hb;
    }
  });
  // attn[t, h, :] = lat[t, h, :] · W_UV[h]ᵀ for every token, head by head (as q_abs above).
  parallel_for(H, [&](int64_t hb, int64_t he) {
    for (int64_t h = hb; h < he; ++h) {
      const int64_t r0 = h * Dkv + Dn;
      if (wv.dtype == DType::F8_E4M3) {  // block scales: the whole view, token by token
        for (int64_t t = 0; t < N; ++t)
          cpu::gemv_rows(attn + (t * H + h) * Dv, lat + (t * H + h) * R, wv, r0, r0 + Dv);
        continue;
      }
      cpu::WeightView uv = wv;  // W_UV[h]: rows r0.. of kv_b
      uv.data = static_cast<const char*>(wv.data) + r0 * wv.cols * int64_t(dtype_size(wv.dtype));
      uv.rows = Dv;
      cpu::gemv_rows_m(attn + h * Dv, H * Dv, lat + h * R, H * R, N, uv, 0, Dv, false);
    }
  });
}

}  // namespace

// ---- Training forward and backward ----

template <typename S>
void mla_forward(S* out, const S* x, const MlaW<W<S>>& w, const MlaDims& d, const float* cos_sin,
                 bool recompute, MlaActs<S>& a, MlaScratch<S>& s) {
  const int64_t N = d.N(), H = d.H, Dq = d.Dq(), R = d.R, Dr = d.Dr, Qr = d.Qr;
  int64_t* pos = grow(s.pos, size_t(N));
  for (int64_t i = 0; i < N; ++i) pos[i] = i % d.T;
  // Wgrad inputs: kept in FP32 (F32 form), recomputed in backward, or saved as SavedAct from a
  // scratch copy (low-precision storage).
  const cpu::ActForm form = act_form<S>(), form_o = act_form<S>(true);
  const bool lowp = form != cpu::ActForm::F32;
  auto keep = [&](std::vector<S>& act, std::vector<S>& scratch, size_t n, bool saved) {
    if (!recompute && !saved) return grow(act, n);
    if (act.capacity()) std::vector<S>().swap(act);
    return grow(scratch, n);
  };
  // save(sa, v, cols, f): v [N, cols] into sa in form f (or sa released when not saved).
  auto save = [&](cpu::SavedAct& sa, const S* v, int64_t cols, cpu::ActForm f, bool on) {
    if constexpr (std::is_same_v<S, float>) {
      if (on) {
        sa.save(v, N, cols, f);
        return;
      }
    }
    sa.release();
  };
  save(a.sx, x, d.D, form, lowp && !recompute);
  S* qa_n = nullptr;
  if (Qr) {
    qa_n = keep(a.qa_n, s.qa_n, size_t(N * Qr), lowp);
    q_latent(grow(a.qa, size_t(N * Qr)), qa_n, grow(a.qa_rstd, size_t(N)), x, w, d);
  }
  save(a.sqa_n, qa_n, Qr, form, Qr && lowp && !recompute);
  S* q = keep(a.q, s.q, size_t(N * H * Dq), false);
  queries(q, x, qa_n, w, d, cos_sin, pos);
  S* kv = grow(a.kv, size_t(N * (R + Dr)));
  kv_latent(kv, x, w, d, cos_sin, pos);
  S* ckv = keep(a.ckv, s.ckv, size_t(N * R), lowp);
  cpu::rmsnorm_forward(ckv, grow(a.kv_rstd, size_t(N)), kv, w.kv_a_norm, N, R, S(d.eps), R + Dr, R);
  save(a.sckv, ckv, R, form, lowp && !recompute);
  S* kvup = keep(a.kvup, s.kvup, size_t(N * H * d.Dkv()), false);
  cpu::linear_forward(kvup, ckv, N, w.kv_b);
  S* attn = nullptr;
  if (lowp) {  // o_proj's input is not recomputable: saved whatever recompute says
    attn = grow(s.attn, size_t(N * H * d.Dv));
    if (a.attn.capacity()) std::vector<S>().swap(a.attn);
  } else {
    attn = grow(a.attn, size_t(N * H * d.Dv));
  }
  attend_naive(attn, grow(a.lse, size_t(d.B * H * d.T)), q, d.B, d.T, 0, kvup, kv + R, R + Dr, d,
               s);
  save(a.sattn, attn, H * d.Dv, form_o, lowp);
  cpu::linear_forward(out, attn, N, w.o);
}

template <typename S>
void mla_backward_input(S* dx, const MlaW<G<S>>& dw, const S* dout, const S* x, const MlaW<W<S>>& w,
                        const MlaDims& d, const float* cos_sin, bool recompute, const MlaActs<S>& a,
                        MlaScratch<S>& s, MlaGrads<S>& gs, bool accumulate) {
  const int64_t N = d.N(), H = d.H, Dq = d.Dq(), R = d.R, Dr = d.Dr, Qr = d.Qr, D = d.D,
                Dkv = d.Dkv(), Dv = d.Dv;
  const S eps = S(d.eps);
  int64_t* pos = grow(s.pos, size_t(N));
  for (int64_t i = 0; i < N; ++i) pos[i] = i % d.T;
  const S *qa_n = a.qa_n.data(), *q = a.q.data(), *ckv = a.ckv.data(), *kvup = a.kvup.data();
  if (recompute) {
    if (Qr) {
      S* t = grow(s.qa_n, size_t(N * Qr));
      cpu::rmsnorm_forward(t, grow(s.rstd, size_t(N)), a.qa.data(), w.q_a_norm, N, Qr, eps);
      qa_n = t;
    }
    S* tq = grow(s.q, size_t(N * H * Dq));
    queries(tq, x, qa_n, w, d, cos_sin, pos);
    q = tq;
    S* tc = grow(s.ckv, size_t(N * R));
    cpu::rmsnorm_forward(tc, grow(s.rstd, size_t(N)), a.kv.data(), w.kv_a_norm, N, R, eps, R + Dr,
                         R);
    ckv = tc;
    S* tk = grow(s.kvup, size_t(N * H * Dkv));
    cpu::linear_forward(tk, ckv, N, w.kv_b);
    kvup = tk;
  }
  gs.x = x;
  gs.ckv = ckv;
  gs.qa_n = qa_n;
  gs.attn = a.attn.data();
  auto saved = [](const cpu::SavedAct& sa) { return sa.saved() ? &sa : nullptr; };
  gs.sx = recompute ? nullptr : saved(a.sx);
  gs.sckv = recompute ? nullptr : saved(a.sckv);
  gs.sqa_n = recompute ? nullptr : saved(a.sqa_n);
  gs.sattn = saved(a.sattn);
  std::copy_n(dout, N * D, grow(gs.dout, size_t(N * D)));
  // Output projection.
  S* dattn = grow(s.dattn, size_t(N * H * Dv));
  cpu::linear_backward_input(dattn, dout, N, w.o);
  // Attention.
  S* dq = grow(gs.dq, size_t(N * H * Dq));
  S* dkvup = grow(gs.dkvup, size_t(N * H * Dkv));
  S* dkpe_h = grow(s.dkpe_heads, size_t(H * N * Dr));
  attend_naive_backward(dq, dkvup, dkpe_h, dattn, a.lse.data(), q, kvup, a.kv.data(), d, s);
  cpu::rope_backward(dq, N, H, Dq, d.Dn, Dr, cos_sin, pos);
  // kv path: kv_b, kv_a_layernorm, the shared k_pe, kv_a.
  S* dckv = grow(s.dckv, size_t(N * R));
  cpu::linear_backward_input(dckv, dkvup, N, w.kv_b);
  S* dkv = grow(gs.dkv, size_t(N * (R + Dr)));
  cpu::rmsnorm_backward(dkv, dw.kv_a_norm, dckv, a.kv.data(), w.kv_a_norm, a.kv_rstd.data(), N, R,
                        R + Dr, R);
  parallel_for(N, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      S* dst = dkv + i * (R + Dr) + R;
      for (int64_t j = 0; j < Dr; ++j) dst[j] = dkpe_h[i * Dr + j];
      for (int64_t h = 1; h < H; ++h)
        for (int64_t j = 0; j < Dr; ++j) dst[j] += dkpe_h[(h * N + i) * Dr + j];
    }
  });
  cpu::rope_backward(dkv, N, 1, R + Dr, R, Dr, cos_sin, pos);
  cpu::linear_backward_input(dx, dkv, N, w.kv_a, accumulate);
  // q path.
  if (Qr) {
    S* dqa = grow(gs.dqa, size_t(N * Qr));
    S* dqa_n = grow(s.dckv, size_t(N * std::max(Qr, R)));  // dckv is consumed
    cpu::linear_backward_input(dqa_n, dq, N, w.q_b);
    cpu::rmsnorm_backward(dqa, dw.q_a_norm, dqa_n, a.qa.data(), w.q_a_norm, a.qa_rstd.data(), N,
                          Qr);
    cpu::linear_backward_input(dx, dqa, N, w.q_a, true);
  } else {
    cpu::linear_backward_input(dx, dq, N, w.q, true);
  }
}

template <typename S>
void mla_backward_weight(const MlaW<G<S>>& dw, const MlaDims& d, const MlaGrads<S>& gs) {
  const int64_t N = d.N(), H = d.H, Dq = d.Dq(), R = d.R, Dr = d.Dr, Qr = d.Qr, D = d.D;
  wgrad_saved(dw.o, gs.dout.data(), gs.attn, gs.sattn, N, H * d.Dv, D);
  wgrad_saved(dw.kv_b, gs.dkvup.data(), gs.ckv, gs.sckv, N, R, H * d.Dkv());
  wgrad_saved(dw.kv_a, gs.dkv.data(), gs.x, gs.sx, N, D, R + Dr);
  if (Qr) {
    wgrad_saved(dw.q_b, gs.dq.data(), gs.qa_n, gs.sqa_n, N, Qr, H * Dq);
    wgrad_saved(dw.q_a, gs.dqa.data(), gs.x, gs.sx, N, D, Qr);
  } else {
    wgrad_saved(dw.q, gs.dq.data(), gs.x, gs.sx, N, D, H * Dq);
  }
}

// ---- Inference on the latent cache ----

namespace {

// The positions of a ragged batch's N tokens into pos[N], each span checked against its blocks.
void span_positions(int64_t* pos, std::span<const SeqSpan> seqs, int64_t bt) {
  for (int64_t i = 0; const SeqSpan& q : seqs) {
    DSV3_CHECK(q.len > 0 && q.start >= 0, "empty sequence in a batch (start {}, len {})", q.start,
               q.len);
    DSV3_CHECK(q.start + q.len <= q.nblocks * bt,
               "positions up to {} exceed the sequence's KV cache ({} block(s) of {} positions; "
               "max_position_embeddings or --max-seq)",
               q.start + q.len, q.nblocks, bt);
    for (int64_t t = 0; t < q.len; ++t) pos[i++] = q.start + t;
  }
}

// The latent kv of the N tokens at pos: c_kv normalized, k_pe beside it, into their cache rows.
void write_latents(const float* x, std::span<const SeqSpan> seqs, const int64_t* pos,
                   const MlaW<W<float>>& w, const ModelConfig& c, const MlaDims& d,
                   const float* cos_sin, MlaCache& cache, MlaScratch<float>& s) {
  const int64_t N = d.N(), R = d.R, Dr = d.Dr, bt = cache.max_seq;
  float* kv = grow(s.kv, size_t(N * (R + Dr)));
  kv_latent(kv, x, w, d, cos_sin, pos);
  float* ckv = grow(s.ckv, size_t(N * R));
  cpu::rmsnorm_forward(ckv, static_cast<float*>(nullptr), kv, w.kv_a_norm, N, R,
                       float(c.rms_norm_eps), R + Dr, R);
  for (int64_t i = 0; const SeqSpan& sq : seqs) {
    for (int64_t t = 0; t < sq.len; ++t, ++i) {
      const int64_t blk = sq.blocks[pos[i] / bt];
      DSV3_CHECK(blk >= 0 && blk < cache.slots, "KV block {} outside the cache's {} blocks", blk,
                 cache.slots);
      const int64_t row = blk * bt + pos[i] % bt;
      std::copy_n(ckv + i * R, R, cache.latent.data() + row * R);
      std::copy_n(kv + i * (R + Dr) + R, Dr, cache.pe.data() + row * Dr);
    }
  }
}

}  // namespace

void mla_write_latents(const float* x, std::span<const SeqSpan> seqs, const MlaW<W<float>>& w,
                       const ModelConfig& c, const float* cos_sin, MlaCache& cache,
                       MlaScratch<float>& s) {
  int64_t N = 0;
  for (const SeqSpan& q : seqs) N += q.len;
  int64_t* pos = grow(s.pos, size_t(N));
  span_positions(pos, seqs, cache.max_seq);
  write_latents(x, seqs, pos, w, c, mla_dims(c, 1, N), cos_sin, cache, s);
}

void mla_forward_cached(float* out, const float* x, std::span<const SeqSpan> seqs,
                        const MlaW<W<float>>& w, const ModelConfig& c, const float* cos_sin,
                        MlaCache& cache, AttnImpl impl, MlaScratch<float>& s) {
  int64_t N = 0;
  for (const SeqSpan& q : seqs) N += q.len;
  const MlaDims d = mla_dims(c, 1, N);
  const int64_t H = d.H, Dq = d.Dq(), Dr = d.Dr, Dv = d.Dv, R = d.R, Dkv = d.Dkv();
  const int64_t bt = cache.max_seq;
  int64_t* pos = grow(s.pos, size_t(N));
  span_positions(pos, seqs, bt);
  float* qa_n = nullptr;
  if (N <= 2) {  // decode: the starts of the next projections, ahead (linear_prefetch)
    if (d.Qr) cpu::linear_prefetch(w.q_b);
    cpu::linear_prefetch(w.kv_a);
  }
  if (d.Qr) {
    qa_n = grow(s.qa_n, size_t(N * d.Qr));
    q_latent(grow(s.qa, size_t(N * d.Qr)), qa_n, static_cast<float*>(nullptr), x, w, d);
  }
  float* q = grow(s.q, size_t(N * H * Dq));
  queries(q, x, qa_n, w, d, cos_sin, pos);
  write_latents(x, seqs, pos, w, c, d, cos_sin, cache, s);
  if (N <= 2) cpu::linear_prefetch(w.o);

  float* attn = grow(s.attn, size_t(N * H * Dv));
  bool decode_batch = seqs.size() > 1 && impl != AttnImpl::Naive;
  for (const SeqSpan& sq : seqs)
    decode_batch = decode_batch && sq.len <= kAbsorbedDecodeTokens &&
                   (impl == AttnImpl::Absorbed || sq.len < kNaiveMinTokens);
  if (decode_batch) {
    attend_decode_batch(attn, q, seqs, w, c, cache, s);
    cpu::linear_forward(out, attn, N, w.o);
    return;
  }
  for (int64_t first = 0; const SeqSpan& sq : seqs) {
    const int64_t T = sq.len, start = sq.start, S = start + T;
    AttnImpl use = impl;
    if (use == AttnImpl::Auto) use = T >= kNaiveMinTokens ? AttnImpl::Naive : AttnImpl::Absorbed;
    // The sequence's latents: in place when they lie in one block, else gathered from its blocks.
    const float* lat = cache.latent.data() + sq.blocks[0] * bt * R;
    const float* pe = cache.pe.data() + sq.blocks[0] * bt * Dr;
    if (S > bt) {
      float* gl = grow(s.glat, size_t(S * R));
      float* gp = grow(s.gpe, size_t(S * Dr));
      for (int64_t j = 0; j * bt < S; ++j) {
        const int64_t n = std::min(bt, S - j * bt), blk = sq.blocks[j];
        std::copy_n(cache.latent.data() + blk * bt * R, n * R, gl + j * bt * R);
        std::copy_n(cache.pe.data() + blk * bt * Dr, n * Dr, gp + j * bt * Dr);
      }
      lat = gl;
      pe = gp;
    }
    const float* qb = q + first * H * Dq;
    float* ab = attn + first * H * Dv;
    const MlaDims ds = mla_dims(c, 1, T);
    if (use == AttnImpl::Naive) {
      // K/V of every attended position, expanded per head: kvup [S, H*(Dn+Dv)].
      float* kvup = grow(s.kvup, size_t(S * H * Dkv));
      cpu::linear_forward(kvup, lat, S, w.kv_b);
      attend_naive(ab, static_cast<float*>(nullptr), qb, 1, T, start, kvup, pe, Dr, ds, s);
    } else if (T <= kAbsorbedDecodeTokens) {
      attend_absorbed_decode(ab, qb, T, start, w, ds, lat, pe, s);
    } else {
      attend_absorbed(ab, qb, T, start, w, ds, lat, pe, s);
    }
    first += T;
  }
  cpu::linear_forward(out, attn, N, w.o);
}

#define DSV3_MLA_INSTANTIATE(S)                                                               \
  template struct MlaActs<S>;                                                                 \
  template void mla_forward<S>(S*, const S*, const MlaW<W<S>>&, const MlaDims&, const float*, \
                               bool, MlaActs<S>&, MlaScratch<S>&);                            \
  template void mla_backward_input<S>(S*, const MlaW<G<S>>&, const S*, const S*,              \
                                      const MlaW<W<S>>&, const MlaDims&, const float*, bool,  \
                                      const MlaActs<S>&, MlaScratch<S>&, MlaGrads<S>&, bool); \
  template void mla_backward_weight<S>(const MlaW<G<S>>&, const MlaDims&, const MlaGrads<S>&);
DSV3_MLA_INSTANTIATE(float)
DSV3_MLA_INSTANTIATE(double)

}  // namespace dsv3::model
