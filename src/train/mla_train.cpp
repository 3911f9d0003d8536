// MLA training forward and backward; see mla_train.hpp (report §2.1.1).
#include "train/mla_train.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/ops.hpp"
#include "backend/cpu/vmath.hpp"
#include "train/linalg.hpp"
#include "train/profile.hpp"

namespace dsv3::train {

MlaDims mla_dims(const model::ModelConfig& c, int64_t B, int64_t T) {
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
  return n * sizeof(S);
}

namespace {

// Scores of head h of sequence b into sc[T, T] (scaled, before softmax; causal part only is
// meaningful): scale · (q_nope·k_noneᵀ + q_pe·k_peᵀ).
template <typename S>
void head_scores(S* sc, const S* q, const S* kvup, const S* kv, const MlaDims& d, int64_t b,
                 int64_t h) {
  const int64_t T = d.T, H = d.H, Dq = d.Dq(), Dkv = d.Dkv(), R = d.R;
  const S* qh = q + b * T * H * Dq + h * Dq;
  gemm<S>(false, true, T, T, d.Dn, S(d.scale), qh, H * Dq, kvup + b * T * H * Dkv + h * Dkv,
          H * Dkv, S(0), sc, T);
  gemm<S>(false, true, T, T, d.Dr, S(d.scale), qh + d.Dn, H * Dq, kv + b * T * (R + d.Dr) + R,
          R + d.Dr, S(1), sc, T);
}

// attn[N, H*Dv] and lse[B, H, T] from q [N, H, Dq], kvup [N, H, Dn+Dv], kv [N, R+Dr].
template <typename S>
void attention_forward(S* attn, S* lse, const S* q, const S* kvup, const S* kv, const MlaDims& d,
                       MlaScratch<S>& s) {
  ProfileScope ps(&StepProfile::attention_s);
  GroupedScope grouped;
  const int64_t T = d.T, H = d.H, Dkv = d.Dkv(), Dv = d.Dv;
  S* tiles = grow(s.tile, size_t(omp_get_max_threads() * 2 * T * T));
  parallel_for(d.B * H, [&](int64_t tb, int64_t te) {
    S* sc = tiles + omp_get_thread_num() * 2 * T * T;
    for (int64_t task = tb; task < te; ++task) {
      const int64_t b = task / H, h = task % H;
      head_scores(sc, q, kvup, kv, d, b, h);
      S* l = lse + (b * H + h) * T;
      for (int64_t t = 0; t < T; ++t) {
        S* p = sc + t * T;
        S mx = p[0];
        for (int64_t j = 1; j <= t; ++j) mx = std::max(mx, p[j]);
        const S sum = cpu::exp_shift_sum(p, p, t + 1, mx);
        const S inv = S(1) / sum;
        for (int64_t j = 0; j <= t; ++j) p[j] *= inv;
        std::fill(p + t + 1, p + T, S(0));
        l[t] = mx + std::log(sum);
      }
      gemm<S>(false, false, T, Dv, T, S(1), sc, T, kvup + b * T * H * Dkv + h * Dkv + d.Dn, H * Dkv,
              S(0), attn + b * T * H * Dv + h * Dv, H * Dv);
    }
  });
}

// Backward of attention_forward: dq [N, H, Dq], dkvup [N, H, Dn+Dv] (overwritten) and the
// per-head k_pe gradients dkpe_heads [H, N, Dr]. Recomputes the probabilities from lse.
template <typename S>
void attention_backward(S* dq, S* dkvup, S* dkpe_heads, const S* dattn, const S* lse, const S* q,
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
      head_scores(p, q, kvup, kv, d, b, h);
      const S* l = lse + (b * H + h) * T;
      for (int64_t t = 0; t < T; ++t) {
        S* r = p + t * T;
        cpu::exp_shift_sum(r, r, t + 1, l[t]);
        std::fill(r + t + 1, r + T, S(0));
      }
      const S* dO = dattn + b * T * H * Dv + h * Dv;
      const S* kvb = kvup + b * T * H * Dkv + h * Dkv;
      S* dkvb = dkvup + b * T * H * Dkv + h * Dkv;
      const S* qh = q + b * T * H * Dq + h * Dq;
      S* dqh = dq + b * T * H * Dq + h * Dq;
      // dP = dO·Vᵀ, dV = Pᵀ·dO
      gemm<S>(false, true, T, T, Dv, S(1), dO, H * Dv, kvb + Dn, H * Dkv, S(0), dp, T);
      gemm<S>(true, false, T, Dv, T, S(1), p, T, dO, H * Dv, S(0), dkvb + Dn, H * Dkv);
      // dS = P ∘ (dP − rowsum(P ∘ dP)) · scale
      for (int64_t t = 0; t < T; ++t) {
        const S* pr = p + t * T;
        S* dr = dp + t * T;
        S dot = 0;
        for (int64_t j = 0; j <= t; ++j) dot += pr[j] * dr[j];
        for (int64_t j = 0; j <= t; ++j) dr[j] = pr[j] * (dr[j] - dot) * S(d.scale);
        std::fill(dr + t + 1, dr + T, S(0));
      }
      const S* kpe = kv + b * T * (R + Dr) + R;
      gemm<S>(false, false, T, Dn, T, S(1), dp, T, kvb, H * Dkv, S(0), dqh, H * Dq);
      gemm<S>(false, false, T, Dr, T, S(1), dp, T, kpe, R + Dr, S(0), dqh + Dn, H * Dq);
      gemm<S>(true, false, T, Dn, T, S(1), dp, T, qh, H * Dq, S(0), dkvb, H * Dkv);
      gemm<S>(true, false, T, Dr, T, S(1), dp, T, qh + Dn, H * Dq, S(0),
              dkpe_heads + h * N * Dr + b * T * Dr, Dr);
    }
  });
}

// q (queries with rotated rope part) from qa_n (q_lora) or x (direct).
template <typename S>
void queries(S* q, const S* x, const S* qa_n, const MlaParams<const S>& w, const MlaDims& d,
             const float* cos_sin, const int64_t* pos) {
  const int64_t N = d.N(), H = d.H, Dq = d.Dq();
  if (d.Qr)
    linear_forward(q, qa_n, w.q_b, N, d.Qr, H * Dq);
  else
    linear_forward(q, x, w.q, N, d.D, H * Dq);
  cpu::rope_forward(q, N, H, Dq, d.Dn, d.Dr, cos_sin, pos);
}

}  // namespace

template <typename S>
void mla_train_forward(S* out, const S* x, const MlaParams<const S>& w, const MlaDims& d,
                       const float* cos_sin, bool recompute, MlaActs<S>& a, MlaScratch<S>& s) {
  const int64_t N = d.N(), H = d.H, Dq = d.Dq(), R = d.R, Dr = d.Dr, Qr = d.Qr;
  const S eps = S(d.eps);
  int64_t* pos = grow(s.pos, size_t(N));
  for (int64_t i = 0; i < N; ++i) pos[i] = i % d.T;
  auto keep = [&](std::vector<S>& act, std::vector<S>& scratch, size_t n) {
    return recompute ? grow(scratch, n) : grow(act, n);
  };
  S* qa_n = nullptr;
  if (Qr) {
    S* qa = grow(a.qa, size_t(N * Qr));
    linear_forward(qa, x, w.q_a, N, d.D, Qr);
    qa_n = keep(a.qa_n, s.qa_n, size_t(N * Qr));
    cpu::rmsnorm_forward(qa_n, grow(a.qa_rstd, size_t(N)), qa, w.q_a_norm, N, Qr, eps);
  }
  S* q = keep(a.q, s.q, size_t(N * H * Dq));
  queries(q, x, qa_n, w, d, cos_sin, pos);

  S* kv = grow(a.kv, size_t(N * (R + Dr)));
  linear_forward(kv, x, w.kv_a, N, d.D, R + Dr);
  cpu::rope_forward(kv, N, 1, R + Dr, R, Dr, cos_sin, pos);
  S* ckv = keep(a.ckv, s.ckv, size_t(N * R));
  cpu::rmsnorm_forward(ckv, grow(a.kv_rstd, size_t(N)), kv, w.kv_a_norm, N, R, eps, R + Dr, R);
  S* kvup = keep(a.kvup, s.kvup, size_t(N * H * d.Dkv()));
  linear_forward(kvup, ckv, w.kv_b, N, R, H * d.Dkv());

  S* attn = grow(a.attn, size_t(N * H * d.Dv));
  attention_forward(attn, grow(a.lse, size_t(d.B * H * d.T)), q, kvup, kv, d, s);
  linear_forward(out, attn, w.o, N, H * d.Dv, d.D);
}

template <typename S>
void mla_train_backward(S* dx, const MlaParams<S>& dw, const S* dout, const S* x,
                        const MlaParams<const S>& w, const MlaDims& d, const float* cos_sin,
                        bool recompute, const MlaActs<S>& a, MlaScratch<S>& s, bool accumulate) {
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
    linear_forward(tk, ckv, w.kv_b, N, R, H * Dkv);
    kvup = tk;
  }
  // Output projection.
  S* dattn = grow(s.dattn, size_t(N * H * Dv));
  linear_backward_input(dattn, dout, w.o, N, H * Dv, D);
  linear_backward_weight(dw.o, dout, a.attn.data(), N, H * Dv, D);
  // Attention.
  S* dq = grow(s.dq, size_t(N * H * Dq));
  S* dkvup = grow(s.dkvup, size_t(N * H * Dkv));
  S* dkpe_h = grow(s.dkpe_heads, size_t(H * N * Dr));
  attention_backward(dq, dkvup, dkpe_h, dattn, a.lse.data(), q, kvup, a.kv.data(), d, s);
  cpu::rope_backward(dq, N, H, Dq, d.Dn, Dr, cos_sin, pos);
  // kv path: kv_b, kv_a_layernorm, the shared k_pe, kv_a.
  S* dckv = grow(s.dckv, size_t(N * R));
  linear_backward_input(dckv, dkvup, w.kv_b, N, R, H * Dkv);
  linear_backward_weight(dw.kv_b, dkvup, ckv, N, R, H * Dkv);
  S* dkv = grow(s.dkv, size_t(N * (R + Dr)));
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
  linear_backward_input(dx, dkv, w.kv_a, N, D, R + Dr, accumulate);
  linear_backward_weight(dw.kv_a, dkv, x, N, D, R + Dr);
  // q path.
  if (Qr) {
    S* dqa = grow(s.dqa, size_t(N * Qr));
    S* dqa_n = grow(s.dkvup, size_t(N * std::max(Qr, H * Dkv)));  // dkvup is consumed
    linear_backward_input(dqa_n, dq, w.q_b, N, Qr, H * Dq);
    linear_backward_weight(dw.q_b, dq, qa_n, N, Qr, H * Dq);
    cpu::rmsnorm_backward(dqa, dw.q_a_norm, dqa_n, a.qa.data(), w.q_a_norm, a.qa_rstd.data(), N,
                          Qr);
    linear_backward_input(dx, dqa, w.q_a, N, D, Qr, true);
    linear_backward_weight(dw.q_a, dqa, x, N, D, Qr);
  } else {
    linear_backward_input(dx, dq, w.q, N, D, H * Dq, true);
    linear_backward_weight(dw.q, dq, x, N, D, H * Dq);
  }
}

#define DSV3_MLA_INSTANTIATE(S)                                                                \
  template struct MlaActs<S>;                                                                  \
  template void mla_train_forward<S>(S*, const S*, const MlaParams<const S>&, const MlaDims&,  \
                                     const float*, bool, MlaActs<S>&, MlaScratch<S>&);         \
  template void mla_train_backward<S>(S*, const MlaParams<S>&, const S*, const S*,             \
                                      const MlaParams<const S>&, const MlaDims&, const float*, \
                                      bool, const MlaActs<S>&, MlaScratch<S>&, bool);
DSV3_MLA_INSTANTIATE(float)
DSV3_MLA_INSTANTIATE(double)

}  // namespace dsv3::train
