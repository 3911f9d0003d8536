// DeepSeekMoE forward; see moe.hpp. The router follows DeepSeek's reference Gate (model.py):
// it renormalizes exactly when scoring is sigmoid and always applies routed_scaling_factor.
// Tokens are grouped by expert (a counting sort) so each expert runs one GEMM over its tokens.
#include "model/moe.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/gemv.hpp"
#include "backend/cpu/ops.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"
#include "model/routing.hpp"

namespace dsv3::model {

void mlp_forward(float* out, const float* x, int64_t N, const MlpWeights& w, MoeScratch& s,
                 bool accumulate) {
  const int64_t F = w.gate.out();
  float* h1 = grow(s.h1, size_t(N * F));
  float* h2 = grow(s.h2, size_t(N * F));
  cpu::linear_forward(h1, x, N, w.gate);
  cpu::linear_forward(h2, x, N, w.up);
  cpu::swiglu_forward(h1, h1, h2, N, F);
  cpu::linear_forward(out, h1, N, w.down, accumulate);
}

void moe_gate_forward(Routing& r, const float* x, int64_t N, const MoeWeights& w,
                      const ModelConfig& c, MoeScratch& s) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size;
  const int64_t G = c.n_group;
  r.indices.resize(size_t(N * K));
  r.weights.resize(size_t(N * K));
  r.scores.resize(size_t(N * E));
  float* sc = r.scores.data();
  // Decode reads the FP32 router with the GEMV kernel (a GEMM call costs more than the product).
  if (N <= cpu::linear_gemv_max_m(cpu::Compute::F32))
    cpu::gemv_forward(sc, x, N, {DType::F32, E, D, w.router.data(), nullptr}, false, false);
  else
    cpu::gemm_f32(false, true, N, E, D, 1.0f, x, D, w.router.data(), D, 0.0f, sc, E);
  const bool sigmoid = c.scoring_func == ScoringFunc::Sigmoid;
  const bool use_bias = !w.bias.empty();
  const bool grouped = G > 1 && c.topk_method != TopkMethod::Greedy;
  parallel_for(
      N,
      [&](int64_t b, int64_t e) {
        std::vector<float> biased(E), gscore(G);
        std::vector<int32_t> order(E), gorder(G);
        for (int64_t n = b; n < e; ++n) {
          float* p = sc + n * E;
          if (sigmoid) {
            for (int64_t i = 0; i < E; ++i) p[i] = 1.0f / (1.0f + std::exp(-p[i]));
          } else {
            cpu::softmax_rows(p, 1, E);
          }
          for (int64_t i = 0; i < E; ++i) biased[i] = p[i] + (use_bias ? w.bias[i] : 0.0f);
          select_experts(biased.data(), use_bias, E, G, c.topk_group, grouped, K, gscore.data(),
                         order.data(), gorder.data());
          int32_t* idx = r.indices.data() + n * K;
          float* wt = r.weights.data() + n * K;
          float sum = 0;
          for (int64_t k = 0; k < K; ++k) {
            idx[k] = order[k];
            wt[k] = p[order[k]];
            sum += wt[k];
          }
          const float scale = float(c.routed_scaling_factor);
          for (int64_t k = 0; k < K; ++k) wt[k] = (sigmoid ? wt[k] / sum : wt[k]) * scale;
        }
      },
      8);
}

namespace {

// Decode (one or two tokens): an expert's matrices are a few hundred KiB to a few MiB, so
// splitting each GEMV over the threads pays a fork/join, a barrier and a stream ramp-up per
// matrix (21+ per MoE layer) for short streams. Instead the threads take whole experts (the
// shared MLP and every active routed one) in one parallel region and stream them end to end;
// their GEMVs run inline on the taking thread.
constexpr int64_t kExpertParallelTokens = 2;

void experts_parallel(float* out, const float* x, int64_t N, const MoeWeights& w,
                      const ModelConfig& c, const int32_t* offsets, const float* xg, float* y,
                      MoeScratch& s) {
  const int64_t E = c.n_routed_experts, D = c.hidden_size;
  // Jobs: -1 = the shared experts (the largest, taken first), then the active routed experts.
  std::vector<int64_t>& jobs = s.jobs;
  jobs.clear();
  if (c.n_shared_experts > 0) jobs.push_back(-1);
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] > offsets[e]) jobs.push_back(e);
  if (c.n_shared_experts == 0) std::fill_n(out, N * D, 0.0f);
  const int nt = region_threads();
  if (s.per_thread.size() < size_t(nt)) s.per_thread.resize(size_t(nt));
  parallel_jobs(int64_t(jobs.size()), [&](int64_t j, int thread) {
    MoeScratch& ts = s.per_thread[size_t(thread)];
    const int64_t e = jobs[size_t(j)];
    if (e < 0) {
      mlp_forward(out, x, N, w.shared, ts);
    } else {
      const int64_t b = offsets[e];
      mlp_forward(y + b * D, xg + b * D, offsets[e + 1] - b, w.experts[size_t(e)], ts);
    }
  });
}

}  // namespace

void moe_forward(float* out, const float* x, int64_t N, const MoeWeights& w, const ModelConfig& c,
                 Routing& r, MoeScratch& s) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size;
  moe_gate_forward(r, x, N, w, c, s);
  // Group the N*K (token, expert) pairs by expert: offsets[e]..offsets[e+1] in `order`.
  int32_t* offsets = grow(s.offsets, size_t(E + 1));
  std::fill_n(offsets, E + 1, 0);
  for (int64_t i = 0; i < N * K; ++i) offsets[r.indices[i] + 1]++;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  int32_t* order = grow(s.order, size_t(N * K));
  {
    std::vector<int32_t> fill(offsets, offsets + E);
    for (int64_t i = 0; i < N * K; ++i) order[fill[r.indices[i]]++] = int32_t(i);
  }
  float* xg = grow(s.gathered, size_t(N * K * D));
  float* y = grow(s.y, size_t(N * K * D));
  for (int64_t i = 0; i < N * K; ++i) {
    const int64_t tok = order[i] / K;
    std::copy(x + tok * D, x + (tok + 1) * D, xg + i * D);
  }
  if (N <= kExpertParallelTokens && region_threads() > 1) {
    experts_parallel(out, x, N, w, c, offsets, xg, y, s);
  } else {
    // Shared experts first (always active), then each routed expert's weighted contribution;
    // every GEMM is parallel inside.
    if (c.n_shared_experts > 0)
      mlp_forward(out, x, N, w.shared, s);
    else
      std::fill_n(out, N * D, 0.0f);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t b = offsets[e], m = offsets[e + 1] - b;
      if (m > 0) mlp_forward(y + b * D, xg + b * D, m, w.experts[size_t(e)], s);
    }
  }
  // Combine in token order so the sum over experts is deterministic.
  std::vector<int32_t> slot(size_t(N * K));
  for (int64_t i = 0; i < N * K; ++i) slot[size_t(order[i])] = int32_t(i);
  parallel_for(N, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const float g = r.weights[t * K + k];
        const float* src = y + int64_t(slot[size_t(t * K + k)]) * D;
        float* dst = out + t * D;
        for (int64_t d = 0; d < D; ++d) dst[d] += g * src[d];
      }
  });
}

}  // namespace dsv3::model
