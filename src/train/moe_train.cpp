// DeepSeekMoE training forward and backward; see moe_train.hpp (report §2.1.2).
#include "train/moe_train.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "model/routing.hpp"
#include "train/linalg.hpp"
#include "train/profile.hpp"

namespace dsv3::train {

MoeDims moe_dims(const model::ModelConfig& c, int64_t N) {
  MoeDims d;
  d.N = N;
  d.D = c.hidden_size;
  d.E = c.n_routed_experts;
  d.K = c.num_experts_per_tok;
  d.F = c.moe_intermediate_size;
  d.Fs = c.moe_intermediate_size * c.n_shared_experts;
  d.G = c.n_group;
  d.topk_group = c.topk_group;
  d.sigmoid = c.scoring_func == model::ScoringFunc::Sigmoid;
  d.grouped = c.n_group > 1 && c.topk_method != model::TopkMethod::Greedy;
  d.routed_scaling_factor = c.routed_scaling_factor;
  return d;
}

template <typename S>
size_t MoeActs<S>::bytes() const {
  size_t f = scores.size() + weights.size() + g.size() + u.size() + act.size() + y.size() +
             sg.size() + su.size() + sact.size() + dscores.size();
  size_t i = indices.size() + offsets.size() + order.size() + slot.size();
  return f * sizeof(S) + i * sizeof(int32_t);
}

namespace {
// Runs fn(e) for every expert with tokens, expert-parallel: each expert's GEMMs run on one
// thread (oneDNN stays sequential inside a parallel region), largest experts first under a
// dynamic schedule. Small per-expert GEMMs scale better this way than multithreaded one by
// one, and a step opens one parallel region instead of one per GEMM.
template <typename Fn>
void for_each_expert(const int32_t* offsets, int64_t E, std::vector<int32_t>& eorder, Fn&& fn) {
  ProfileScope ps(&StepProfile::experts_s);
  GroupedScope grouped;
  int32_t* ord = grow(eorder, size_t(E));
  int64_t n = 0;
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] > offsets[e]) ord[n++] = int32_t(e);
  std::stable_sort(ord, ord + n, [&](int32_t a, int32_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  const bool par = omp_get_max_threads() > 1 && !omp_in_parallel() && n > 1;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t i = 0; i < n; ++i) fn(int64_t(ord[i]));
}
}  // namespace

template <typename S>
void moe_router_forward(MoeActs<S>& a, const S* x, const MoeParams<const S>& w, const MoeDims& d,
                        MoeScratch<S>& s) {
  const int64_t N = d.N, E = d.E, K = d.K, G = d.G;
  S* sc = grow(a.scores, size_t(N * E));
  int32_t* idx = grow(a.indices, size_t(N * K));
  S* wt = grow(a.weights, size_t(N * K));
  gemm<S>(false, true, N, E, d.D, S(1), x, d.D, w.router, d.D, S(0), sc, E);
  ProfileScope ps(&StepProfile::router_s);
  const int nt = omp_get_max_threads();
  S* fsel = grow(s.sel, size_t(nt * (E + G)));
  int32_t* isel = grow(s.isel, size_t(nt * (E + G)));
  parallel_for(
      N,
      [&](int64_t nb, int64_t ne) {
        const int tid = omp_get_thread_num();
        S* biased = fsel + tid * (E + G);
        S* gscore = biased + E;
        int32_t* ord = isel + tid * (E + G);
        int32_t* gord = ord + E;
        for (int64_t n = nb; n < ne; ++n) {
          S* p = sc + n * E;
          if (d.sigmoid) {
            for (int64_t i = 0; i < E; ++i) p[i] = S(1) / (S(1) + std::exp(-p[i]));
          } else {
            S mx = *std::max_element(p, p + E), sum = 0;
            for (int64_t i = 0; i < E; ++i) sum += (p[i] = std::exp(p[i] - mx));
            for (int64_t i = 0; i < E; ++i) p[i] /= sum;
          }
          for (int64_t i = 0; i < E; ++i) biased[i] = p[i] + (w.bias ? w.bias[i] : S(0));
          model::select_experts(biased, w.bias != nullptr, E, G, d.topk_group, d.grouped, K, gscore,
                                ord, gord);
          S sum = 0;
          for (int64_t k = 0; k < K; ++k) {
            idx[n * K + k] = ord[k];
            sum += p[ord[k]];
          }
          const S rsf = S(d.routed_scaling_factor);
          for (int64_t k = 0; k < K; ++k) {
            const S v = p[ord[k]];
            wt[n * K + k] = (d.sigmoid ? v / sum : v) * rsf;
          }
        }
      },
      8);
  a.load.assign(size_t(E), 0);
  for (int64_t i = 0; i < N * K; ++i) a.load[size_t(idx[i])]++;
}

template <typename S>
void moe_train_forward(S* out, const S* x, const MoeParams<const S>& w, const MoeDims& d,
                       MoeActs<S>& a, MoeScratch<S>& s) {
  const int64_t N = d.N, E = d.E, K = d.K, D = d.D, F = d.F, NK = N * K;
  moe_router_forward(a, x, w, d, s);
  std::optional<ProfileScope> ps(std::in_place, &StepProfile::moe_permute_s);
  // Counting sort of the pairs by expert (stable: token order within an expert).
  int32_t* offsets = grow(a.offsets, size_t(E + 1));
  int32_t* order = grow(a.order, size_t(NK));
  int32_t* slot = grow(a.slot, size_t(NK));
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + int32_t(a.load[size_t(e)]);
  for (int64_t e = 0; e < E; ++e) a.load[size_t(e)] = offsets[e];  // fill cursors
  for (int64_t i = 0; i < NK; ++i) {
    const int32_t j = int32_t(a.load[size_t(a.indices[size_t(i)])]++);
    order[j] = int32_t(i);
    slot[i] = j;
  }
  for (int64_t e = 0; e < E; ++e) a.load[size_t(e)] = offsets[e + 1] - offsets[e];

  ps.reset();
  if (d.Fs > 0)
    mlp_train_forward(out, grow(a.sg, size_t(N * d.Fs)), grow(a.su, size_t(N * d.Fs)),
                      grow(a.sact, size_t(N * d.Fs)), x, w.shared, N, D, d.Fs);
  else
    std::fill_n(out, N * D, S(0));
  S* xg = grow(s.xg, size_t(NK * D));
  ps.emplace(&StepProfile::moe_permute_s);
  parallel_for(NK, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) std::copy_n(x + (order[j] / K) * D, D, xg + j * D);
  });
  ps.reset();
  S* g = grow(a.g, size_t(NK * F));
  S* u = grow(a.u, size_t(NK * F));
  S* act = grow(a.act, size_t(NK * F));
  S* y = grow(a.y, size_t(NK * D));
  for_each_expert(offsets, E, s.eorder, [&](int64_t e) {
    const int64_t b = offsets[e], m = offsets[e + 1] - b;
    mlp_train_forward(y + b * D, g + b * F, u + b * F, act + b * F, xg + b * D,
                      w.experts[size_t(e)], m, D, F);
  });
  // Combine in token order (deterministic).
  ps.emplace(&StepProfile::moe_permute_s);
  const S* wt = a.weights.data();
  parallel_for(N, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const S gk = wt[t * K + k];
        const S* src = y + int64_t(slot[t * K + k]) * D;
        S* dst = out + t * D;
        for (int64_t i = 0; i < D; ++i) dst[i] += gk * src[i];
      }
  });
}

template <typename S>
void moe_train_backward(S* dx, const MoeParams<S>& dw, const S* dout, const S* x,
                        const MoeParams<const S>& w, const MoeDims& d, const MoeActs<S>& a,
                        MoeScratch<S>& s, bool accumulate) {
  const int64_t N = d.N, E = d.E, K = d.K, D = d.D, F = d.F, NK = N * K;
  const int32_t *slot = a.slot.data(), *offsets = a.offsets.data();
  const S *y = a.y.data(), *wt = a.weights.data();
  // Gate-weight gradients and the per-pair output gradients, in sorted order.
  std::optional<ProfileScope> ps(std::in_place, &StepProfile::moe_permute_s);
  S* dwt = grow(s.dw, size_t(NK));
  S* dyg = grow(s.dyg, size_t(NK * D));
  S* xg = grow(s.xg, size_t(NK * D));
  parallel_for(N, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t j = slot[t * K + k];
        const S* yt = y + j * D;
        const S* go = dout + t * D;
        S* dy = dyg + j * D;
        const S gk = wt[t * K + k];
        S dot = 0;
        for (int64_t i = 0; i < D; ++i) {
          dot += go[i] * yt[i];
          dy[i] = gk * go[i];
        }
        dwt[t * K + k] = dot;
        std::copy_n(x + t * D, D, xg + j * D);
      }
  });
  ps.reset();
  // Experts, one GEMM per projection over each expert's tokens.
  const size_t fmax = size_t(std::max(NK * F, N * d.Fs));
  S* dg = grow(s.dg, fmax);
  S* du = grow(s.du, fmax);
  S* dxg = grow(s.dxg, size_t(NK * D));
  for_each_expert(offsets, E, s.eorder, [&](int64_t e) {
    const int64_t b = offsets[e], m = offsets[e + 1] - b;
    mlp_train_backward(dxg + b * D, dw.experts[size_t(e)], dyg + b * D, xg + b * D,
                       a.g.data() + b * F, a.u.data() + b * F, a.act.data() + b * F,
                       w.experts[size_t(e)], m, D, F, dg + b * F, du + b * F);
  });
  if (d.Fs > 0)
    mlp_train_backward(dx, dw.shared, dout, x, a.sg.data(), a.su.data(), a.sact.data(), w.shared, N,
                       D, d.Fs, dg, du, accumulate);
  else if (!accumulate)
    std::fill_n(dx, N * D, S(0));
  ps.emplace(&StepProfile::moe_permute_s);
  parallel_for(N, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const S* src = dxg + int64_t(slot[t * K + k]) * D;
        S* dst = dx + t * D;
        for (int64_t i = 0; i < D; ++i) dst[i] += src[i];
      }
  });
  // Router: d(gate weights) -> d(scores) -> d(logits).
  ps.emplace(&StepProfile::router_s);
  S* ds = grow(s.ds, size_t(N * E));
  const S rsf = S(d.routed_scaling_factor);
  parallel_for(N, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const S* p = a.scores.data() + t * E;
      const int32_t* idx = a.indices.data() + t * K;
      const S* gw = dwt + t * K;
      S* dst = ds + t * E;
      if (!a.dscores.empty())
        std::copy_n(a.dscores.data() + t * E, E, dst);
      else
        std::fill_n(dst, E, S(0));
      if (d.sigmoid) {  // w_k = rsf·s_k / Σ_j s_j
        S sum = 0, dot = 0;
        for (int64_t k = 0; k < K; ++k) sum += p[idx[k]];
        for (int64_t k = 0; k < K; ++k) dot += gw[k] * p[idx[k]];
        for (int64_t k = 0; k < K; ++k) dst[idx[k]] += rsf * (gw[k] - dot / sum) / sum;
        for (int64_t i = 0; i < E; ++i) dst[i] *= p[i] * (S(1) - p[i]);
      } else {  // w_k = rsf·s_k, s = softmax
        for (int64_t k = 0; k < K; ++k) dst[idx[k]] += rsf * gw[k];
        S dot = 0;
        for (int64_t i = 0; i < E; ++i) dot += dst[i] * p[i];
        for (int64_t i = 0; i < E; ++i) dst[i] = p[i] * (dst[i] - dot);
      }
    }
  });
  ps.reset();
  linear_backward_weight(dw.router, ds, x, N, D, E);
  linear_backward_input(dx, ds, w.router, N, D, E, true);
}

#define DSV3_MOE_INSTANTIATE(S)                                                               \
  template struct MoeActs<S>;                                                                 \
  template void moe_router_forward<S>(MoeActs<S>&, const S*, const MoeParams<const S>&,       \
                                      const MoeDims&, MoeScratch<S>&);                        \
  template void moe_train_forward<S>(S*, const S*, const MoeParams<const S>&, const MoeDims&, \
                                     MoeActs<S>&, MoeScratch<S>&);                            \
  template void moe_train_backward<S>(S*, const MoeParams<S>&, const S*, const S*,            \
                                      const MoeParams<const S>&, const MoeDims&,              \
                                      const MoeActs<S>&, MoeScratch<S>&, bool);
DSV3_MOE_INSTANTIATE(float)
DSV3_MOE_INSTANTIATE(double)

}  // namespace dsv3::train
