// Finite-difference gradient checks in double precision (central differences) of every training
// layer on odd shapes: RMSNorm (strided), SwiGLU, RoPE/YaRN, linear, embedding + head + CE, MLA
// (q_lora and direct q), the dense MLP, DeepSeekMoE (sigmoid with groups and bias; softmax
// greedy; an extra score gradient as the balance loss passes it), and the whole model with MTP
// depth 2 (tied and untied embeddings, with recomputation). Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <utility>

#include "backend/cpu/ops.hpp"
#include "core/rng.hpp"
#include "model/decoder.hpp"
#include "model/embed_head.hpp"
#include "model/rope.hpp"
#include "train/model_train.hpp"
#include "train/params.hpp"

using namespace dsv3;
using namespace dsv3::train;

namespace {

constexpr double kEps = 1e-5;

std::vector<double> randn(Rng& r, size_t n, double std = 1.0) {
  std::vector<double> v(n);
  for (auto& x : v) x = r.normal() * std;
  return v;
}

double dot(const double* a, const double* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Compares the analytic gradient g of loss() w.r.t. x[0..n) with central differences at
// `samples` indices (all when n is small). Returns the worst |fd - g| / (1e-6 + |fd|) seen.
double check(const char* what, double* x, const double* g, size_t n,
             const std::function<double()>& loss, Rng& r, size_t samples = 12) {
  double worst = 0;
  const size_t m = std::min(n, samples);
  for (size_t s = 0; s < m; ++s) {
    const size_t i = n <= samples ? s : size_t(r.below(n));
    const double x0 = x[i];
    x[i] = x0 + kEps;
    const double lp = loss();
    x[i] = x0 - kEps;
    const double lm = loss();
    x[i] = x0;
    const double fd = (lp - lm) / (2 * kEps);
    const double err = std::fabs(fd - g[i]) / (1e-6 + std::fabs(fd));
    worst = std::max(worst, err);
    EXPECT_NEAR(g[i], fd, 1e-6 + 1e-5 * std::fabs(fd)) << what << "[" << i << "]";
  }
  return worst;
}

TEST(LayerGrad, RmsnormStrided) {
  const uint64_t seed = 11;
  std::printf("[fd] seed %llu\n", (unsigned long long)seed);
  Rng r(seed);
  const int64_t n = 5, d = 13, ld_in = 17, ld_out = 19;
  auto x = randn(r, size_t(n * ld_in)), w = randn(r, size_t(d)), R = randn(r, size_t(n * ld_out));
  std::vector<double> y(size_t(n * ld_out)), rstd(static_cast<size_t>(n));
  auto loss = [&] {
    std::fill(y.begin(), y.end(), 0.0);
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, d, 1e-6, ld_in, ld_out);
    return dot(y.data(), R.data(), y.size());
  };
  loss();
  std::vector<double> dx(x.size()), dw(static_cast<size_t>(d));
  cpu::rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), n, d,
                        ld_in, ld_out);
  // Only the first d columns of each row are inputs.
  for (int64_t i = 0; i < n; ++i)
    check("rmsnorm dx", x.data() + i * ld_in, dx.data() + i * ld_in, size_t(d), loss, r);
  check("rmsnorm dw", w.data(), dw.data(), size_t(d), loss, r);
}

TEST(LayerGrad, SwigluRopeLinear) {
  const uint64_t seed = 12;
  std::printf("[fd] seed %llu\n", (unsigned long long)seed);
  Rng r(seed);
  const int64_t n = 7, f = 9;
  auto g = randn(r, size_t(n * f)), u = randn(r, size_t(n * f)), R = randn(r, size_t(n * f));
  std::vector<double> y(static_cast<size_t>(n * f));
  auto sw = [&] {
    cpu::swiglu_forward(y.data(), g.data(), u.data(), n, f);
    return dot(y.data(), R.data(), y.size());
  };
  std::vector<double> dg(g.size()), du(u.size());
  cpu::swiglu_backward(dg.data(), du.data(), R.data(), g.data(), u.data(), n, f);
  check("swiglu dgate", g.data(), dg.data(), g.size(), sw, r, 30);
  check("swiglu dup", u.data(), du.data(), u.size(), sw, r, 30);

  // RoPE with the YaRN table of tiny-v3-like settings, 3 heads, rope part at offset 5.
  model::ModelConfig c;
  c.qk_rope_head_dim = 6;
  c.rope_scaling.yarn = true;
  c.rope_scaling.factor = 4;
  c.rope_scaling.original_max_position_embeddings = 8;
  c.max_position_embeddings = 64;
  auto cs = model::rope_cos_sin(c, 40);
  const int64_t heads = 3, ld = 11, off = 5;
  std::vector<int64_t> pos = {0, 3, 9, 17, 33, 39, 21};
  auto x = randn(r, size_t(n * heads * ld)), Rr = randn(r, x.size());
  std::vector<double> xr(x.size());
  auto rope = [&] {
    xr = x;
    cpu::rope_forward(xr.data(), n, heads, ld, off, 6, cs.data(), pos.data());
    return dot(xr.data(), Rr.data(), xr.size());
  };
  std::vector<double> dx = Rr;
  cpu::rope_backward(dx.data(), n, heads, ld, off, 6, cs.data(), pos.data());
  check("rope dx", x.data(), dx.data(), x.size(), rope, r, 40);

  const int64_t M = 5, in = 7, out = 3;
  auto X = randn(r, size_t(M * in)), W = randn(r, size_t(out * in)), Rl = randn(r, size_t(M * out));
  std::vector<double> Y(static_cast<size_t>(M * out));
  const cpu::DenseWeight<double> Wv{W.data(), out, in};
  auto lin = [&] {
    cpu::linear_forward(Y.data(), X.data(), M, Wv);
    return dot(Y.data(), Rl.data(), Y.size());
  };
  std::vector<double> dX(X.size()), dW(W.size(), 0.0);
  cpu::linear_backward_input(dX.data(), Rl.data(), M, Wv);
  cpu::linear_backward_weight(dW.data(), Rl.data(), X.data(), M, in, out);
  check("linear dx", X.data(), dX.data(), X.size(), lin, r, 40);
  check("linear dW", W.data(), dW.data(), W.size(), lin, r, 40);
}

TEST(LayerGrad, EmbeddingHeadCrossEntropy) {
  const uint64_t seed = 13;
  std::printf("[fd] seed %llu\n", (unsigned long long)seed);
  Rng r(seed);
  const int64_t N = 9, D = 5, V = 11;
  auto E = randn(r, size_t(V * D)), W = randn(r, size_t(V * D));
  std::vector<int32_t> tok(N), tgt(N);
  for (int64_t i = 0; i < N; ++i) {
    tok[size_t(i)] = int32_t(r.below(V));
    tgt[size_t(i)] = i % 4 == 3 ? -1 : int32_t(r.below(V));
  }
  std::vector<double> x(size_t(N * D)), dx(size_t(N * D));
  model::HeadScratch<double> hs;
  const double scale = 0.37;
  const cpu::DenseWeight<double> Et{E.data(), V, D}, Wh{W.data(), V, D};
  auto loss = [&] {
    model::embedding_forward<double>(x.data(), Et, tok.data(), N);
    return scale * model::head_cross_entropy<double>(nullptr, nullptr, x.data(), Wh, tgt.data(), N,
                                                     scale, nullptr, hs);
  };
  std::vector<double> dE(E.size(), 0.0), dW(W.size(), 0.0);
  model::embedding_forward<double>(x.data(), Et, tok.data(), N);
  int64_t cnt = 0;
  model::head_cross_entropy<double>(dx.data(), dW.data(), x.data(), Wh, tgt.data(), N, scale, &cnt,
                                    hs);
  EXPECT_EQ(cnt, N - N / 4);
  model::embedding_backward(dE.data(), dx.data(), tok.data(), N, D);
  check("embedding", E.data(), dE.data(), E.size(), loss, r, 40);
  check("head", W.data(), dW.data(), W.size(), loss, r, 40);
}

// A tiny model with odd sizes; `q_lora` picks the q path, `sigmoid` the router flavor.
model::ModelConfig tiny_config(bool q_lora, bool sigmoid) {
  model::ModelConfig c;
  c.vocab_size = 37;
  c.hidden_size = 22;
  c.intermediate_size = 19;
  c.moe_intermediate_size = 7;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 3;
  if (q_lora) c.q_lora_rank = 9;
  c.kv_lora_rank = 7;
  c.qk_nope_head_dim = 5;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 3;
  c.n_routed_experts = 6;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  if (sigmoid) {
    c.n_group = 3;
    c.topk_group = 2;
    c.topk_method = model::TopkMethod::NoauxTc;
    c.scoring_func = model::ScoringFunc::Sigmoid;
    c.routed_scaling_factor = 2.5;
  } else {
    c.topk_method = model::TopkMethod::Greedy;
    c.scoring_func = model::ScoringFunc::Softmax;
    c.routed_scaling_factor = 1.3;
  }
  c.rope_scaling.yarn = true;
  c.rope_scaling.factor = 4;
  c.rope_scaling.original_max_position_embeddings = 8;
  c.rope_scaling.mscale = c.rope_scaling.mscale_all_dim = 0.707;
  c.max_position_embeddings = 64;
  c.num_nextn_predict_layers = 2;
  c.validate("tiny test config");
  return c;
}

// Double copy of a randomly initialized store; norms and the bias get random values too.
std::vector<double> random_params(const ParamLayout& layout, const model::ModelConfig& c,
                                  uint64_t seed) {
  ParamStore p(c);
  p.init_random(seed);
  std::vector<double> d(p.params(), p.params() + p.size());
  Rng r(seed + 1);
  for (const auto& e : layout.entries()) {
    if (e.role == model::ParamRole::Norm)
      for (int64_t i = 0; i < e.numel; ++i) d[size_t(e.offset + i)] = 1 + 0.1 * r.normal();
    if (e.role == model::ParamRole::RouterBias)
      for (int64_t i = 0; i < e.numel; ++i) d[size_t(e.offset + i)] = 0.05 * r.normal();
  }
  return d;
}

// Checks the parameters of every tensor whose name contains `filter` (all when empty).
double check_tensors(const ParamLayout& layout, std::vector<double>& p,
                     const std::vector<double>& g, const std::string& filter,
                     const std::function<double()>& loss, Rng& r, size_t samples = 4) {
  double worst = 0;
  for (const auto& e : layout.entries()) {
    if (!filter.empty() && e.name.find(filter) == std::string::npos) continue;
    if (!e.trainable) {
      for (int64_t i = 0; i < e.numel; ++i) EXPECT_EQ(g[size_t(e.offset + i)], 0.0) << e.name;
      continue;
    }
    worst = std::max(worst, check(e.name.c_str(), p.data() + e.offset, g.data() + e.offset,
                                  size_t(e.numel), loss, r, samples));
  }
  return worst;
}

class BlockGrad : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

// One MLA + one MoE decoder layer (layer 1 of the tiny config) with input gradient, as a layer
// test: loss = Σ out·R.
TEST_P(BlockGrad, DecoderLayersMlaMlpMoe) {
  const auto [q_lora, sigmoid] = GetParam();
  const uint64_t seed = 100 + 2 * q_lora + sigmoid;
  std::printf("[fd] seed %llu q_lora %d sigmoid %d\n", (unsigned long long)seed, q_lora, sigmoid);
  auto c = tiny_config(q_lora, sigmoid);
  ParamLayout layout(c);
  auto p = random_params(layout, c, seed);
  std::vector<double> g(p.size(), 0.0);
  Rng r(seed);
  const int64_t B = 2, T = 7, N = B * T, D = c.hidden_size;
  auto cs = model::rope_cos_sin(c, T);
  auto x = randn(r, size_t(N * D)), R = randn(r, size_t(N * D));
  auto Rs = randn(r, size_t(N * c.n_routed_experts));  // extra score gradient
  for (bool recompute : {false, true}) {
    for (int64_t layer : {0, 1}) {  // dense, then MoE
      const auto wm =
          model::bind_arena<model::W<double>>(c, layout, std::as_const(p).data(), 0, true);
      const auto gm = model::bind_arena<model::G<double>>(c, layout, g.data(), 0, true);
      const auto& w = wm.layers[size_t(layer)];
      const auto& gw = gm.layers[size_t(layer)];
      model::LayerActs<double> a;
      model::DecoderScratch<double> s;
      const model::DecoderDims dd{B, T, recompute};
      std::vector<double> h(x.size());
      // The extra score term makes loss = Σ out·R + Σ scores·Rs (MoE layer only).
      auto loss = [&] {
        h = x;
        model::decoder_layer_forward(h.data(), w, c, dd, cs.data(), a, s);
        double l = dot(h.data(), R.data(), h.size());
        if (w.moe) l += dot(a.moe.scores.data(), Rs.data(), Rs.size());
        return l;
      };
      loss();
      if (w.moe) a.moe.dscores = Rs;
      std::fill(g.begin(), g.end(), 0.0);
      std::vector<double> dh = R;
      model::decoder_layer_backward(dh.data(), gw, w, c, dd, cs.data(), a, s);
      const std::string prefix = "model.layers." + std::to_string(layer) + ".";
      double wp = check_tensors(layout, p, g, prefix, loss, r);
      double wx = check("dx", x.data(), dh.data(), x.size(), loss, r, 24);
      std::printf("[fd] layer %lld (%s) recompute %d: worst rel err params %.2e, input %.2e\n",
                  (long long)layer, layer ? "MLA+MoE" : "MLA+MLP", recompute, wp, wx);
    }
  }
}

// The weight part of a layer's backward can wait: running both layers' input parts first (as a
// zero-bubble or DualPipe schedule does) and their weight parts afterwards gives the gradients of
// the immediate backward exactly.
TEST_P(BlockGrad, DeferredWeightPartEqualsImmediate) {
  const auto [q_lora, sigmoid] = GetParam();
  const uint64_t seed = 300 + 2 * q_lora + sigmoid;
  std::printf("[fd] seed %llu q_lora %d sigmoid %d\n", (unsigned long long)seed, q_lora, sigmoid);
  auto c = tiny_config(q_lora, sigmoid);
  ParamLayout layout(c);
  auto p = random_params(layout, c, seed);
  Rng r(seed);
  const int64_t B = 2, T = 7, N = B * T, D = c.hidden_size;
  auto cs = model::rope_cos_sin(c, T);
  auto x = randn(r, size_t(N * D)), R = randn(r, size_t(N * D));
  const auto wm = model::bind_arena<model::W<double>>(c, layout, std::as_const(p).data(), 0, true);
  const model::DecoderDims dd{B, T, false};
  std::vector<model::LayerActs<double>> a(2);
  model::DecoderScratch<double> s;
  std::vector<double> h = x;
  for (int64_t l = 0; l < 2; ++l)
    model::decoder_layer_forward(h.data(), wm.layers[size_t(l)], c, dd, cs.data(), a[size_t(l)], s);
  std::vector<double> g1(p.size(), 0.0), g2(p.size(), 0.0);
  const auto gm1 = model::bind_arena<model::G<double>>(c, layout, g1.data(), 0, true);
  const auto gm2 = model::bind_arena<model::G<double>>(c, layout, g2.data(), 0, true);
  std::vector<double> dh1 = R, dh2 = R;
  for (int64_t l = 1; l >= 0; --l)
    model::decoder_layer_backward(dh1.data(), gm1.layers[size_t(l)], wm.layers[size_t(l)], c, dd,
                                  cs.data(), a[size_t(l)], s);
  std::vector<model::DecoderGrads<double>> gs(2);
  for (int64_t l = 1; l >= 0; --l)
    model::decoder_layer_backward_input(dh2.data(), gm2.layers[size_t(l)], wm.layers[size_t(l)], c,
                                        dd, cs.data(), a[size_t(l)], s, gs[size_t(l)]);
  for (int64_t l = 1; l >= 0; --l)
    model::decoder_layer_backward_weight(gm2.layers[size_t(l)], wm.layers[size_t(l)], c, dd,
                                         a[size_t(l)], s, gs[size_t(l)]);
  for (size_t i = 0; i < dh1.size(); ++i) ASSERT_EQ(dh1[i], dh2[i]) << "dx " << i;
  size_t nonzero = 0;
  for (const auto& e : layout.entries())
    for (int64_t i = 0; i < e.numel; ++i) {
      const size_t k = size_t(e.offset + i);
      ASSERT_EQ(g1[k], g2[k]) << e.name << "[" << i << "]";
      nonzero += g1[k] != 0;
    }
  EXPECT_GT(nonzero, p.size() / 4);  // the comparison covers real gradients
}

// The whole model with MTP depth 2 (loss = CE + λ/2·(MTP_1 + MTP_2)), every tensor.
TEST_P(BlockGrad, WholeModelWithMtp) {
  const auto [q_lora, sigmoid] = GetParam();
  const uint64_t seed = 200 + 2 * q_lora + sigmoid;
  std::printf("[fd] seed %llu q_lora %d sigmoid %d\n", (unsigned long long)seed, q_lora, sigmoid);
  auto c = tiny_config(q_lora, sigmoid);
  ParamLayout layout(c);
  auto p = random_params(layout, c, seed);
  std::vector<double> g(p.size(), 0.0);
  Rng r(seed);
  const int64_t B = 2, T = 9;
  std::vector<int32_t> tokens(size_t(B * T));
  for (auto& t : tokens) t = int32_t(r.below(uint64_t(c.vocab_size)));
  for (bool tie : {false, true}) {
    TrainOptions o;
    o.mtp_lambda = 0.3;
    o.mtp_depth = 2;
    o.tie_mtp_embeddings = tie;
    o.recompute = tie;  // covers both settings without doubling the run time
    TrainModelT<double> m(c, layout, p.data(), g.data());
    std::fill(g.begin(), g.end(), 0.0);
    StepStats st;
    m.forward_backward(tokens.data(), B, T, o, &st);
    ASSERT_EQ(st.mtp_loss.size(), 2u);
    auto loss = [&] { return m.forward_loss(tokens.data(), B, T, o); };
    double worst = check_tensors(layout, p, g, "", loss, r, 3);
    std::printf("[fd] whole model, MTP depth 2, tie %d recompute %d: worst rel err %.2e\n", tie,
                o.recompute, worst);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, BlockGrad,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

}  // namespace
