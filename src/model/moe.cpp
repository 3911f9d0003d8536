// DeepSeekMoE forward and backward; see moe.hpp. The router follows DeepSeek's reference Gate
// (model.py): it renormalizes exactly when scoring is sigmoid and always applies
// routed_scaling_factor.
#include "model/moe.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "backend/cpu/gemv.hpp"
#include "backend/cpu/linear_lowp.hpp"
#include "backend/cpu/ops.hpp"
#include "backend/cpu/vreduce.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"
#include "dist/expert_dispatch.hpp"
#include "model/model.hpp"

namespace dsv3::model {

MoeDims moe_dims(const ModelConfig& c, int64_t N) {
  MoeDims d;
  d.N = N;
  d.D = c.hidden_size;
  d.E = c.n_routed_experts;
  d.K = c.num_experts_per_tok;
  d.F = c.moe_intermediate_size;
  d.Fs = c.moe_intermediate_size * c.n_shared_experts;
  d.G = c.n_group;
  d.topk_group = c.topk_group;
  d.sigmoid = c.scoring_func == ScoringFunc::Sigmoid;
  d.grouped = c.n_group > 1 && c.topk_method != TopkMethod::Greedy;
  d.routed_scaling_factor = c.routed_scaling_factor;
  return d;
}

template <typename S>
size_t MoeActs<S>::bytes() const {
  size_t f = scores.size() + weights.size() + g.size() + u.size() + y.size() + sg.size() +
             su.size() + dscores.size();
  size_t i = indices.size() + offsets.size() + order.size() + slot.size();
  return f * sizeof(S) + i * sizeof(int32_t);
}

template <typename S>
void MoeActs<S>::routing(Routing& r, int64_t N, int64_t K, int64_t E) const {
  r.indices.assign(indices.begin(), indices.begin() + N * K);
  r.weights.assign(weights.begin(), weights.begin() + N * K);
  r.scores.assign(scores.begin(), scores.begin() + N * E);
}

namespace {

constexpr int64_t kMaxGroupTop = 64;  // group scores sum at most this many affinities

// Chooses the K experts of one token from its biased affinities biased[E] (scores plus the
// correction bias when there is one). With `grouped` (n_group > 1 and a group-limited method, or
// node-limited routing: the groups are nodes) groups are scored by the sum of their `group_top`
// largest biased scores (two with a bias, the maximum without, K/M for M nodes) and all but the
// best `topk_group` are masked to -inf; then the top K by biased score, ties to the lower index.
// The K indices land in ord[0, K), best first. `biased` is clobbered; gscore[G], ord[E] and
// gord[G] are scratch.
template <typename S>
void select_experts(S* biased, int64_t E, int64_t G, int64_t topk_group, int64_t group_top,
                    bool grouped, int64_t K, S* gscore, int32_t* ord, int32_t* gord) {
  if (grouped) {
    const int64_t per = E / G;
    for (int64_t g = 0; g < G; ++g) {
      const S* q = biased + g * per;
      // The group_top largest, descending (insertion into a short list), summed largest first.
      S top[kMaxGroupTop];
      int64_t n = 0;
      for (int64_t i = 0; i < per; ++i) {
        if (n == group_top && !(q[i] > top[n - 1])) continue;
        int64_t j = n < group_top ? n++ : n - 1;
        for (; j > 0 && q[i] > top[j - 1]; --j) top[j] = top[j - 1];
        top[j] = q[i];
      }
      S sum = S(0);  // 0 + t0 + t1 ... rounds as t0 + t1 ...
      for (int64_t j = 0; j < n; ++j) sum += top[j];
      gscore[g] = sum;
    }
    std::iota(gord, gord + G, 0);
    // Ties to the lower group index, as a stable sort would (std::sort does not allocate).
    std::sort(gord, gord + G, [&](int32_t a, int32_t b) {
      return gscore[a] > gscore[b] || (gscore[a] == gscore[b] && a < b);
    });
    for (int64_t gi = topk_group; gi < G; ++gi)
      std::fill_n(biased + gord[gi] * per, per, S(-INFINITY));
  }
  std::iota(ord, ord + E, 0);
  std::partial_sort(ord, ord + K, ord + E, [&](int32_t a, int32_t b) {
    return biased[a] > biased[b] || (biased[a] == biased[b] && a < b);
  });
}

// The groups the router limits a token to: the config's (n_group, topk_group), or the nodes of
// node-limited routing.
struct RouteGroups {
  int64_t G = 1, topk = 1, top = 1;
  bool grouped = false;
};
RouteGroups route_groups(const MoeDims& d, const NodeLimit& nl, bool has_bias) {
  if (!nl.active()) return {d.G, d.topk_group, has_bias ? 2 : 1, d.grouped};
  DSV3_CHECK(d.E % nl.nodes == 0,
             "node-limited routing: {} routed experts do not split over {} nodes", d.E, nl.nodes);
  DSV3_CHECK(d.K <= nl.max_nodes * (d.E / nl.nodes),
             "node-limited routing: {} experts per token do not fit in {} nodes of {} experts", d.K,
             nl.max_nodes, d.E / nl.nodes);
  const int64_t top =
      std::min<int64_t>({std::max<int64_t>(1, d.K / nl.max_nodes), d.E / nl.nodes, kMaxGroupTop});
  return {nl.nodes, nl.max_nodes, top, true};
}

// Runs fn(e) for every expert with tokens, expert-parallel: each expert's GEMMs run on one
// thread (oneDNN stays sequential inside a parallel region), largest experts first under a
// dynamic schedule. Small per-expert GEMMs scale better this way than multithreaded one by
// one, and a call opens one parallel region instead of one per GEMM.
template <typename Fn>
void for_each_expert(const int32_t* offsets, int64_t E, std::vector<int32_t>& eorder, Fn&& fn) {
  ProfileScope ps(&StepProfile::experts_s);
  GroupedScope grouped;
  int32_t* ord = grow(eorder, size_t(E));
  int64_t n = 0;
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] > offsets[e]) ord[n++] = int32_t(e);
  std::sort(ord, ord + n, [&](int32_t a, int32_t b) {
    const int32_t la = offsets[a + 1] - offsets[a], lb = offsets[b + 1] - offsets[b];
    return la > lb || (la == lb && a < b);
  });
  const bool par = omp_get_max_threads() > 1 && !omp_in_parallel() && n > 1;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t i = 0; i < n; ++i) fn(int64_t(ord[i]));
}

// Decode (one or two tokens): an expert's matrices are a few hundred KiB to a few MiB, so
// splitting each GEMV over the threads pays a fork/join, a barrier and a stream ramp-up per
// matrix (21+ per MoE layer) for short streams. Instead the threads take whole experts (the
// shared MLP first, then every active routed one) in one parallel region (on the decode spin
// team) and stream them end to end; their GEMVs run inline on the taking thread.
constexpr int64_t kExpertParallelTokens = 2;

// Tokens up to which the router runs on the GEMV: the forwards that run on a spin team (model.hpp).
constexpr int64_t kRouterGemvMaxN = Model::kSpinTeamBatchTokens;

}  // namespace

template <typename S>
void moe_router_forward(MoeActs<S>& a, const S* x, const MoeW<W<S>>& w, const MoeDims& d,
                        MoeScratch<S>& s) {
  const int64_t N = d.N, E = d.E, K = d.K;
  const RouteGroups rg = route_groups(d, s.node_limit, w.bias != nullptr);
  const int64_t G = rg.G;
  S* sc = grow(a.scores, size_t(N * E));
  int32_t* idx = grow(a.indices, size_t(N * K));
  S* wt = grow(a.weights, size_t(N * K));
  // Decode and batched decode read the FP32 router with the GEMV kernel: a GEMM call costs more
  // than the product, and inside a batched decode step's spin team oneDNN's sgemm runs on one
  // thread while the other waits (1.4 ms of a 60 ms C = 16 step of the bench model). Each row's
  // scores are then the ones the row gets alone (gemv.hpp), so batching never moves a routing.
  if constexpr (std::is_same_v<S, float>) {
    if (N <= kRouterGemvMaxN)
      cpu::gemv_forward(sc, x, N, {DType::F32, E, d.D, w.router, nullptr}, false);
    else
      cpu::gemm(false, true, N, E, d.D, 1.0f, x, d.D, w.router, d.D, 0.0f, sc, E);
  } else {
    cpu::gemm(false, true, N, E, d.D, S(1), x, d.D, w.router, d.D, S(0), sc, E);
  }
  ProfileScope ps(&StepProfile::router_s);
  S* fsel = grow(s.sel, size_t(N * (E + G)));
  int32_t* isel = grow(s.isel, size_t(N * (E + G)));
  const S rsf = S(d.routed_scaling_factor);
  parallel_for_balanced(
      N,
      [&](int64_t nb, int64_t ne) {
        for (int64_t n = nb; n < ne; ++n) {
          S* biased = fsel + n * (E + G);
          S* gscore = biased + E;
          int32_t* ord = isel + n * (E + G);
          int32_t* gord = ord + E;
          S* p = sc + n * E;
          if (d.sigmoid) {
            for (int64_t i = 0; i < E; ++i) p[i] = S(1) / (S(1) + std::exp(-p[i]));
          } else {
            S mx = *std::max_element(p, p + E), sum = 0;
            for (int64_t i = 0; i < E; ++i) sum += (p[i] = std::exp(p[i] - mx));
            for (int64_t i = 0; i < E; ++i) p[i] /= sum;
          }
          for (int64_t i = 0; i < E; ++i) biased[i] = p[i] + (w.bias ? w.bias[i] : S(0));
          select_experts(biased, E, G, rg.topk, rg.top, rg.grouped, K, gscore, ord, gord);
          S sum = 0;
          for (int64_t k = 0; k < K; ++k) {
            idx[n * K + k] = ord[k];
            sum += p[ord[k]];
          }
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

namespace {

// The rows the routed experts run on here, with K slots each: the local tokens (every slot
// valid, experts 0..E-1) or, under expert parallelism, the rows other ranks sent (a slot names a
// local expert, or is -1 when the choice is another rank's).
template <typename S>
struct Rows {
  const S* x;           // [n, D]
  int64_t n;            // rows
  const int32_t* eid;   // [n, K] expert here, or -1
  const S* gate;        // [n, K] gate weights
  int64_t experts, e0;  // experts here, global index of the first
};

// Sorts the valid slots of `r` by expert (stable: row order within an expert) into a.offsets
// [experts + 1], a.order [pairs] (pair -> slot r·K + k) and a.slot [n·K] (slot -> pair, or -1),
// and gathers the rows of the pairs into xg. Returns the number of pairs.
template <typename S>
int64_t sort_pairs(const Rows<S>& r, const MoeDims& d, MoeActs<S>& a, std::vector<S>& xg_buf) {
  const int64_t K = d.K, D = d.D, nk = r.n * K, En = r.experts;
  int32_t* offsets = grow(a.offsets, size_t(En + 1));
  int32_t* slot = grow(a.slot, size_t(nk));
  std::fill_n(offsets, En + 1, 0);
  for (int64_t i = 0; i < nk; ++i)
    if (r.eid[i] >= 0) offsets[r.eid[i] + 1]++;
  for (int64_t e = 0; e < En; ++e) offsets[e + 1] += offsets[e];
  const int64_t pairs = offsets[En];
  int32_t* order = grow(a.order, size_t(std::max<int64_t>(pairs, 1)));
  int64_t* cursor = grow(a.cursor, size_t(En));
  std::copy_n(offsets, En, cursor);
  for (int64_t i = 0; i < nk; ++i) {
    if (r.eid[i] < 0) {
      slot[i] = -1;
      continue;
    }
    const int32_t j = int32_t(cursor[r.eid[i]]++);
    order[j] = int32_t(i);
    slot[i] = j;
  }
  S* xg = grow(xg_buf, size_t(pairs * D));
  parallel_for_balanced(pairs, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) std::copy_n(r.x + (order[j] / K) * D, D, xg + j * D);
  });
  return pairs;
}

// out_rows[t] += Σ_k g·y[slot] over the valid slots of each row t, in k order.
template <typename S>
void combine(S* out_rows, const Rows<S>& r, const int32_t* slot, const S* y, int64_t K, int64_t D) {
  parallel_for_balanced(r.n, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        if (slot[t * K + k] < 0) continue;
        const S gk = r.gate[t * K + k];
        const S* src = y + int64_t(slot[t * K + k]) * D;
        S* dst = out_rows + t * D;
        for (int64_t i = 0; i < D; ++i) dst[i] += gk * src[i];
      }
  });
}

// Rows of a weight per piece of a one-token decode's split (a multiple of FP8's 128-row blocks):
// 256 KiB of a BF16 weight of 512 columns, 512 KiB at 1,024.
constexpr int64_t kPieceRows = 256;

// One-token decode (r.n == 1) on several threads: the MLPs (shared, then every active routed
// expert) go in two rounds of pieces of kPieceRows rows that the threads claim one at a time:
// gate and up rows with their SwiGLU, then, after a join, down rows. With whole experts per
// thread (the jobs below) the last job left one thread idle for up to an expert's 1.5-3 MB of
// BF16 weights per layer; pieces bound that at one piece. Every output row is still one GEMV row
// of the same kernel (linear_forward_rows), so the results are the whole-expert ones.
void split_decode_forward(float* out, const Rows<float>& r, const MoeW<W<float>>& w,
                          const MoeDims& d, const int32_t* offsets, const float* xg, float* g,
                          float* u, float* y, float* sg, float* su, bool has_shared,
                          MoeScratch<float>& s) {
  const int64_t D = d.D, F = d.F, Fs = has_shared ? d.Fs : 0;
  struct Mlp {
    const MlpW<W<float>>* w;
    const float* x;  // [D]
    float *g, *u, *act;
    float* y;  // [D]
  };
  std::vector<int64_t>& jobs = s.jobs;  // filled by pieces() below
  float* act = grow(s.act, size_t(Fs + offsets[r.experts] * F));
  thread_local std::vector<Mlp> mlps;  // grows once
  mlps.clear();
  // The shared MLP writes out itself (nothing else is in out yet); a routed expert its pair's y.
  if (has_shared) mlps.push_back({&w.shared, r.x, sg, su, act, out});
  for (int64_t e = 0; e < r.experts; ++e) {
    const int64_t b = offsets[e];
    if (offsets[e + 1] > b)
      mlps.push_back({&w.experts[size_t(r.e0 + e)], xg + b * D, g + b * F, u + b * F,
                      act + Fs + b * F, y + b * D});
  }
  const int64_t nm = int64_t(mlps.size());
  const Mlp* ms = mlps.data();  // the master's list (mlps names each thread's own)
  // Pieces: (mlp << 32) | first row.
  auto pieces = [&](bool down) {
    jobs.clear();
    for (int64_t i = 0; i < nm; ++i) {
      const int64_t rows = down ? ms[i].w->down.out() : ms[i].w->gate.out();
      for (int64_t r0 = 0; r0 < rows; r0 += kPieceRows) jobs.push_back(i << 32 | r0);
    }
  };
  pieces(false);
  for (int64_t i = 0; i < nm; ++i) cpu::linear_prefetch(ms[i].w->gate);
  parallel_jobs(int64_t(jobs.size()), [&](int64_t j, int) {
    const Mlp& m = ms[jobs[size_t(j)] >> 32];
    const int64_t r0 = jobs[size_t(j)] & 0xffffffff;
    const int64_t r1 = std::min(m.w->gate.out(), r0 + kPieceRows);
    cpu::linear_forward_rows(m.g, m.x, m.w->gate, r0, r1);
    cpu::linear_forward_rows(m.u, m.x, m.w->up, r0, r1);
    cpu::swiglu_forward(m.act + r0, m.g + r0, m.u + r0, 1, r1 - r0);
  });
  pieces(true);
  for (int64_t i = 0; i < nm; ++i) cpu::linear_prefetch(ms[i].w->down);
  parallel_jobs(int64_t(jobs.size()), [&](int64_t j, int) {
    const Mlp& m = ms[jobs[size_t(j)] >> 32];
    const int64_t r0 = jobs[size_t(j)] & 0xffffffff;
    cpu::linear_forward_rows(m.y, m.act, m.w->down, r0, std::min(D, r0 + kPieceRows));
  });
}

// out_rows[n, D] += Σ_k g·expert(x) over the valid slots of each row, in row order.
// shared(): the shared experts' job when has_shared (decode runs it beside the routed experts).
template <typename S, typename Shared>
void routed_forward(S* out_rows, const Rows<S>& r, const MoeW<W<S>>& w, const MoeDims& d,
                    MoeActs<S>& a, MoeScratch<S>& s, bool decode_jobs, bool has_shared,
                    Shared&& shared) {
  const int64_t K = d.K, D = d.D, F = d.F;
  std::optional<ProfileScope> ps(std::in_place, &StepProfile::moe_permute_s);
  const int64_t pairs = sort_pairs<S>(r, d, a, s.xg);
  const int32_t *offsets = a.offsets.data(), *slot = a.slot.data();
  const S* xg = s.xg.data();
  ps.reset();
  S* g = grow(a.g, size_t(pairs * F));
  S* u = grow(a.u, size_t(pairs * F));
  S* y = grow(a.y, size_t(pairs * D));
  auto routed = [&](int64_t e) {
    const int64_t b = offsets[e], m = offsets[e + 1] - b;
    mlp_forward(y + b * D, g + b * F, u + b * F, static_cast<S*>(nullptr), xg + b * D, m,
                w.experts[size_t(r.e0 + e)]);
  };
  bool split = false;  // a one-token decode step in pieces (split_decode_forward)
  if constexpr (std::is_same_v<S, float>)
    split = decode_jobs && r.n == 1 && !w.experts[size_t(r.e0)].gate.lowp();
  if (split) {
    if constexpr (std::is_same_v<S, float>)
      split_decode_forward(out_rows, r, w, d, offsets, xg, g, u, y, a.sg.data(), a.su.data(),
                           has_shared, s);
  } else if (decode_jobs) {
    std::vector<int64_t>& jobs = s.jobs;  // -1: the shared experts (the largest, taken first)
    jobs.clear();
    if (has_shared) jobs.push_back(-1);
    for (int64_t e = 0; e < r.experts; ++e)
      if (offsets[e + 1] > offsets[e]) jobs.push_back(e);
    for (int64_t e : jobs)  // the start of every job's first weight, ahead (linear_prefetch)
      cpu::linear_prefetch(e < 0 ? w.shared.gate : w.experts[size_t(r.e0 + e)].gate);
    parallel_jobs(int64_t(jobs.size()), [&](int64_t j, int) {
      const int64_t e = jobs[size_t(j)];
      if (e < 0)
        shared();
      else
        routed(e);
    });
  } else {
    // Shared experts (their GEMMs parallel inside), then the routed ones expert-parallel.
    if (has_shared) shared();
    for_each_expert(offsets, r.experts, s.eorder, routed);
  }
  ps.emplace(&StepProfile::moe_permute_s);
  combine(out_rows, r, slot, y, K, D);
}

// Backward input part over the rows: dx_rows[n, D] += the experts' input gradients, dw_slots
// [n, K] = the gate-weight gradients (0 in invalid slots); fills gs.dyg, gs.xg, gs.dg, gs.du.
// With fuse non-null, each expert's weight gradients are added into *fuse right after its input
// part, on the same thread while its data is in cache (the immediate backward of training).
template <typename S>
void routed_backward_input(S* dx_rows, S* dw_slots, const S* dout_rows, const Rows<S>& r,
                           const MoeW<W<S>>& w, const MoeDims& d, const MoeActs<S>& a,
                           MoeScratch<S>& s, MoeGrads<S>& gs, const MoeW<G<S>>* fuse) {
  const int64_t K = d.K, D = d.D, F = d.F;
  const int32_t *slot = a.slot.data(), *offsets = a.offsets.data(), *order = a.order.data();
  const int64_t pairs = offsets[r.experts];
  const S* y = a.y.data();
  std::optional<ProfileScope> ps(std::in_place, &StepProfile::moe_permute_s);
  S* dyg = grow(gs.dyg, size_t(pairs * D));
  S* xg = grow(gs.xg, size_t(pairs * D));
  parallel_for_balanced(r.n, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t j = slot[t * K + k];
        if (j < 0) {
          dw_slots[t * K + k] = S(0);
          continue;
        }
        const S* yt = y + j * D;
        const S* go = dout_rows + t * D;
        S* dy = dyg + j * D;
        const S gk = r.gate[t * K + k];
        for (int64_t i = 0; i < D; ++i) dy[i] = gk * go[i];
        dw_slots[t * K + k] = cpu::dot_ps(go, yt, D);
      }
  });
  parallel_for_balanced(pairs, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) std::copy_n(r.x + (order[j] / K) * D, D, xg + j * D);
  });
  ps.reset();
  S* dg = grow(gs.dg, size_t(pairs * F));
  S* du = grow(gs.du, size_t(pairs * F));
  S* dxg = grow(s.dxg, size_t(pairs * D));
  for_each_expert(offsets, r.experts, s.eorder, [&](int64_t e) {
    const int64_t b = offsets[e], m = offsets[e + 1] - b;
    mlp_backward_input(dxg + b * D, dg + b * F, du + b * F, dyg + b * D, a.g.data() + b * F,
                       a.u.data() + b * F, m, w.experts[size_t(r.e0 + e)]);
    if (fuse)
      mlp_backward_weight(fuse->experts[size_t(r.e0 + e)], dyg + b * D, xg + b * D, nullptr,
                          a.g.data() + b * F, a.u.data() + b * F, dg + b * F, du + b * F, m, D, F);
  });
  ps.emplace(&StepProfile::moe_permute_s);
  parallel_for_balanced(r.n, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = 0; k < K; ++k) {
        if (slot[t * K + k] < 0) continue;
        const S* src = dxg + int64_t(slot[t * K + k]) * D;
        S* dst = dx_rows + t * D;
        for (int64_t i = 0; i < D; ++i) dst[i] += src[i];
      }
  });
}

// The wire formats of the expert all-to-alls under the training precision (the process-wide
// scope the training step holds; report §3.3.4): what goes to the experts in the precision of
// their Fprop/Dgrad input (BF16, or E4M3 per 1×128 tile, as those GEMMs quantize it anyway),
// what comes back from them in BF16; FP32 throughout under fp32.
dist::WireFormats wire_formats() {
  switch (cpu::wgrad_precision()) {
    case cpu::Precision::BF16:
      return {dist::Wire::BF16, dist::Wire::BF16};
    case cpu::Precision::FP8:
      return {dist::Wire::FP8, dist::Wire::BF16};
    default:
      return {};
  }
}

bool expert_parallel(const MoeScratch<float>& s) {
  return s.ep && s.ep->size() > 1;
}
bool expert_parallel(const MoeScratch<double>& s) {
  DSV3_CHECK(!s.ep || s.ep->size() == 1, "expert parallelism runs FP32 models only");
  return false;
}

}  // namespace

template <typename S>
void moe_forward(S* out, const S* x, const MoeW<W<S>>& w, const MoeDims& d, MoeActs<S>& a,
                 MoeScratch<S>& s) {
  const int64_t N = d.N, E = d.E, K = d.K, D = d.D;
  moe_router_forward(a, x, w, d, s);
  S *sg = nullptr, *su = nullptr;
  if (d.Fs > 0) {
    sg = grow(a.sg, size_t(N * d.Fs));
    su = grow(a.su, size_t(N * d.Fs));
  } else {
    std::fill_n(out, N * D, S(0));
  }
  auto shared = [&] { mlp_forward(out, sg, su, static_cast<S*>(nullptr), x, N, w.shared); };
  if constexpr (std::is_same_v<S, float>) {
    if (expert_parallel(s)) {
      // Each token goes once to every rank owning one of its experts; this rank's experts run on
      // what it received, and their weighted sums go back to the tokens' ranks.
      dist::Comm& ep = *s.ep;
      {
        dist::DispatchTimer t(s.dispatch);
        dist::expert_dispatch(ep, a.plan, a.xr, x, a.indices.data(), a.weights.data(), N, K, D, E,
                              wire_formats());
      }
      if (s.dispatch) s.dispatch->add(a.plan, ep.rank());
      const int64_t per = E / ep.size();
      const Rows<S> r{
          a.xr.data(), a.plan.R,       a.plan.recv_expert.data(), a.plan.recv_weight.data(),
          per,         ep.rank() * per};
      S* yr = grow(a.yr, size_t(a.plan.R * D));
      std::fill_n(yr, a.plan.R * D, S(0));
      routed_forward(yr, r, w, d, a, s, false, d.Fs > 0, shared);
      dist::DispatchTimer t(s.dispatch);
      dist::expert_combine(ep, a.plan, out, yr);
      return;
    }
  }
  const Rows<S> r{x, N, a.indices.data(), a.weights.data(), E, 0};
  // On a spin team (batched decode, model.cpp) whole experts per thread too: an OpenMP region
  // (for_each_expert) would run on one thread there.
  const bool jobs = N <= kExpertParallelTokens || detail::idle_team() != nullptr;
  routed_forward(out, r, w, d, a, s, jobs && region_threads() > 1, d.Fs > 0, shared);
}

template <typename S>
void moe_backward_input(S* dx, const S* dout, const S* x, const MoeW<W<S>>& w, const MoeDims& d,
                        const MoeActs<S>& a, MoeScratch<S>& s, MoeGrads<S>& gs, bool accumulate,
                        const MoeW<G<S>>* fuse_expert_weights) {
  gs.experts_done = fuse_expert_weights != nullptr;
  const int64_t N = d.N, E = d.E, K = d.K, D = d.D;
  gs.x = x;
  std::copy_n(dout, N * D, grow(gs.dout, size_t(N * D)));
  S* dwt = grow(s.dw, size_t(N * K));
  if (d.Fs > 0) {
    mlp_backward_input(dx, grow(gs.sdg, size_t(N * d.Fs)), grow(gs.sdu, size_t(N * d.Fs)), dout,
                       a.sg.data(), a.su.data(), N, w.shared, accumulate);
  } else if (!accumulate) {
    std::fill_n(dx, N * D, S(0));
  }
  bool done = false;
  if constexpr (std::is_same_v<S, float>) {
    if (expert_parallel(s)) {
      dist::Comm& ep = *s.ep;
      const int64_t per = E / ep.size(), R = a.plan.R;
      const Rows<S> r{a.xr.data(),    R, a.plan.recv_expert.data(), a.plan.recv_weight.data(), per,
                      ep.rank() * per};
      {
        dist::DispatchTimer t(s.dispatch);
        dist::expert_combine_backward(ep, a.plan, gs.dyr, dout);
      }
      S* dxr = grow(gs.dxr, size_t(R * D));
      std::fill_n(dxr, R * D, S(0));
      S* dwr = grow(gs.dwr, size_t(R * K));
      routed_backward_input(dxr, dwr, gs.dyr.data(), r, w, d, a, s, gs, fuse_expert_weights);
      {
        dist::DispatchTimer t(s.dispatch);
        dist::expert_dispatch_backward(ep, a.plan, dx, dwt, dxr, dwr);
      }
      done = true;
    }
  }
  if (!done) {
    const Rows<S> r{x, N, a.indices.data(), a.weights.data(), E, 0};
    routed_backward_input(dx, dwt, dout, r, w, d, a, s, gs, fuse_expert_weights);
  }
  // Router: d(gate weights) -> d(scores) -> d(logits).
  ProfileScope ps(&StepProfile::router_s);
  S* ds = grow(gs.ds, size_t(N * E));
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
  cpu::gemm(false, false, N, D, E, S(1), ds, E, w.router, D, S(1), dx, D);  // dx += ds·Wg
}

template <typename S>
void moe_backward_weight(const MoeW<G<S>>& dw, const MoeDims& d, const MoeActs<S>& a,
                         MoeScratch<S>& s, const MoeGrads<S>& gs) {
  const int64_t N = d.N, D = d.D, F = d.F;
  // The experts the sorted pairs belong to: all of them, or this rank's under expert parallelism.
  int64_t experts = d.E, e0 = 0;
  if (expert_parallel(s)) {
    experts = d.E / s.ep->size();
    e0 = s.ep->rank() * experts;
  }
  const int32_t* offsets = a.offsets.data();
  if (!gs.experts_done)
    for_each_expert(offsets, experts, s.eorder, [&](int64_t e) {
      const int64_t b = offsets[e], m = offsets[e + 1] - b;
      mlp_backward_weight(dw.experts[size_t(e0 + e)], gs.dyg.data() + b * D, gs.xg.data() + b * D,
                          nullptr, a.g.data() + b * F, a.u.data() + b * F, gs.dg.data() + b * F,
                          gs.du.data() + b * F, m, D, F);
    });
  if (d.Fs > 0)
    mlp_backward_weight(dw.shared, gs.dout.data(), gs.x, nullptr, a.sg.data(), a.su.data(),
                        gs.sdg.data(), gs.sdu.data(), N, D, d.Fs);
  // dWg += dsᵀ·x, FP32 whatever the training precision (gating stays FP32, report §3.3).
  cpu::gemm(true, false, d.E, D, N, S(1), gs.ds.data(), d.E, gs.x, D, S(1), dw.router, D);
}

#define DSV3_MOE_INSTANTIATE(S)                                                                  \
  template struct MoeActs<S>;                                                                    \
  template void moe_router_forward<S>(MoeActs<S>&, const S*, const MoeW<W<S>>&, const MoeDims&,  \
                                      MoeScratch<S>&);                                           \
  template void moe_forward<S>(S*, const S*, const MoeW<W<S>>&, const MoeDims&, MoeActs<S>&,     \
                               MoeScratch<S>&);                                                  \
  template void moe_backward_input<S>(S*, const S*, const S*, const MoeW<W<S>>&, const MoeDims&, \
                                      const MoeActs<S>&, MoeScratch<S>&, MoeGrads<S>&, bool,     \
                                      const MoeW<G<S>>*);                                        \
  template void moe_backward_weight<S>(const MoeW<G<S>>&, const MoeDims&, const MoeActs<S>&,     \
                                       MoeScratch<S>&, const MoeGrads<S>&);
DSV3_MOE_INSTANTIATE(float)
DSV3_MOE_INSTANTIATE(double)

// ---- The sequence-wise balance loss (eqs. 17-20) ----

namespace {

// One sequence: scores [T, E], indices [T, K]; adds scale·dL_seq/ds into dscores when non-null.
// Returns L_seq / α = Σ_i f_i·P_i; f and P are scratch of E entries.
double balance_sequence(const float* scores, const int32_t* indices, int64_t T, int64_t E,
                        int64_t K, double grad_scale, float* dscores, std::vector<double>& f,
                        std::vector<double>& P) {
  std::fill(f.begin(), f.end(), 0.0);
  std::fill(P.begin(), P.end(), 0.0);
  for (int64_t j = 0; j < T * K; ++j) {
    const int32_t e = indices[j];
    DSV3_CHECK(e >= 0 && e < E, "expert index {} at token {} slot {} is outside [0, {})", e, j / K,
               j % K, E);
    f[size_t(e)] += 1.0;
  }
  const double fscale = double(E) / double(K * T);
  for (auto& x : f) x *= fscale;
  for (int64_t t = 0; t < T; ++t) {
    const float* s = scores + t * E;
    double sum = 0;
    for (int64_t i = 0; i < E; ++i) sum += s[i];
    const double inv = 1.0 / sum;
    for (int64_t i = 0; i < E; ++i) P[size_t(i)] += s[i] * inv;
  }
  double loss = 0;
  for (int64_t i = 0; i < E; ++i) loss += f[size_t(i)] * P[size_t(i)] / double(T);
  if (dscores) {
    // L = c·Σ_i f_i·s_i/S with S = Σ_j s_j, c = grad_scale (α/(B·T)):
    // dL/ds_k = c·(f_k − Σ_i f_i·s'_i) / S.
    for (int64_t t = 0; t < T; ++t) {
      const float* s = scores + t * E;
      float* d = dscores + t * E;
      double sum = 0, fs = 0;
      for (int64_t i = 0; i < E; ++i) {
        sum += s[i];
        fs += f[size_t(i)] * s[i];
      }
      const double mix = fs / sum, c = grad_scale / sum;
      for (int64_t i = 0; i < E; ++i) d[i] += float(c * (f[size_t(i)] - mix));
    }
  }
  return loss;
}

}  // namespace

float balance_loss(const float* scores, const int32_t* indices, int64_t B, int64_t T, int64_t E,
                   int64_t K, float alpha, float* dscores) {
  DSV3_CHECK(B >= 0 && T >= 0 && E > 0 && K > 0 && K <= E,
             "balance_loss: bad sizes B={} T={} E={} K={}", B, T, E, K);
  if (B == 0 || T == 0) return 0.0f;
  std::vector<double> per_seq(size_t(B), 0.0);
  const double grad_scale = double(alpha) / double(B * T);
  parallel_for(B, [&](int64_t b0, int64_t b1) {
    std::vector<double> f(static_cast<size_t>(E)), P(static_cast<size_t>(E));
    for (int64_t b = b0; b < b1; ++b) {
      per_seq[size_t(b)] =
          balance_sequence(scores + b * T * E, indices + b * T * K, T, E, K, grad_scale,
                           dscores ? dscores + b * T * E : nullptr, f, P);
    }
  });
  double total = 0;
  for (double x : per_seq) total += x;
  return float(double(alpha) * total / double(B));
}

}  // namespace dsv3::model
