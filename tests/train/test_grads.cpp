// Gradient parity of the training engine with DeepSeek's official PyTorch code (autograd through
// the official modules, tests/data/REFERENCE.md): train.loss and every grad.* of tiny-v3 and
// tiny-v2lite; with MTP (λ = 0.3) train.loss_total and every grad_total.* of tiny-v3, with the
// MTP layer's own embedding/head copies and with them tied to the main ones. Tolerances:
// loss 1e-5, each gradient max|err| <= 1e-4 · max|reference|; the routing bias exactly zero.
// Also: recomputation gives the same gradients with fewer activation bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/rng.hpp"
#include "io/safetensors.hpp"
#include "train/model_train.hpp"
#include "train/params.hpp"

using namespace dsv3;
using namespace dsv3::train;

namespace {

struct Ref {
  io::TensorStore store;
  std::vector<int32_t> tokens;
  int64_t B = 0, T = 0;
  explicit Ref(const std::string& dir) {
    store = io::TensorStore::open_file(dir + "/reference.safetensors");
    const auto& t = store.get("tokens");
    B = t.shape[0];
    T = t.shape[1];
    tokens = io::read_i32(t);
  }
  float scalar(const std::string& n) const { return io::read_f32(store.get(n))[0]; }
};

struct Err {
  double abs = 0, ref_max = 0;
  double rel() const { return ref_max > 0 ? abs / ref_max : abs; }
};

Err compare(const float* got, const std::vector<float>& want) {
  Err e;
  for (size_t i = 0; i < want.size(); ++i) {
    double d = std::fabs(double(got[i]) - double(want[i]));
    if (!(d <= e.abs)) e.abs = std::isnan(d) ? INFINITY : d;
    e.ref_max = std::max(e.ref_max, double(std::fabs(want[i])));
  }
  return e;
}

// Checks every trainable tensor against `prefix`<name> (tensors absent from the reference
// are skipped only when `skip_mtp` and they belong to the MTP layer).
void check_grads(const ParamStore& p, const Ref& ref, const std::string& prefix, bool skip_mtp,
                 const std::vector<float>* grads = nullptr) {
  double worst = 0;
  std::string worst_name;
  int checked = 0;
  for (const auto& e : p.entries()) {
    if (skip_mtp && e.mtp) continue;
    const float* g = (grads ? grads->data() : p.grads()) + e.offset;
    auto want = io::read_f32(ref.store.get(prefix + e.name));
    ASSERT_EQ(int64_t(want.size()), e.numel) << e.name;
    if (e.role == model::ParamRole::RouterBias) {
      for (int64_t i = 0; i < e.numel; ++i) ASSERT_EQ(g[i], 0.0f) << e.name;
      ++checked;
      continue;
    }
    Err err = compare(g, want);
    EXPECT_LE(err.abs, 1e-4 * err.ref_max)
        << prefix << e.name << " max|err| " << err.abs << " max|ref| " << err.ref_max;
    if (err.rel() > worst) {
      worst = err.rel();
      worst_name = e.name;
    }
    ++checked;
  }
  std::printf("[grads] %d tensors vs %s*: worst max|err|/max|ref| = %.3g (%s)\n", checked,
              prefix.c_str(), worst, worst_name.c_str());
}

class GradParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GradParity, MainLossAndGradients) {
  const std::string dir = std::string(DSV3_TEST_DATA) + "/" + GetParam();
  Ref ref(dir);
  ParamStore p = ParamStore::load(dir);
  TrainModel m(p.config(), p.layout(), p.params(), p.grads());
  StepStats st;
  double loss = m.forward_backward(ref.tokens.data(), ref.B, ref.T, TrainOptions{}, &st);
  const float want = ref.scalar("train.loss");
  std::printf("[grads] %s loss %.7f reference %.7f |d| %.3g\n", GetParam().c_str(), loss, want,
              std::fabs(loss - want));
  EXPECT_NEAR(loss, want, 1e-5);
  check_grads(p, ref, "grad.", true);
  EXPECT_FALSE(st.expert_load.empty());
  for (const auto& l : st.expert_load) {
    int64_t s = 0;
    for (auto v : l) s += v;
    EXPECT_EQ(s, ref.B * ref.T * p.config().num_experts_per_tok);
  }
}

TEST_P(GradParity, RecomputeSameGradientsLessMemory) {
  const std::string dir = std::string(DSV3_TEST_DATA) + "/" + GetParam();
  Ref ref(dir);
  ParamStore p = ParamStore::load(dir);
  TrainModel m(p.config(), p.layout(), p.params(), p.grads());
  StepStats full, rc;
  TrainOptions o;
  m.forward_backward(ref.tokens.data(), ref.B, ref.T, o, &full);
  std::vector<float> g0(p.grads(), p.grads() + p.size());
  p.zero_grad();
  TrainModel m2(p.config(), p.layout(), p.params(), p.grads());
  o.recompute = true;
  m2.forward_backward(ref.tokens.data(), ref.B, ref.T, o, &rc);
  double worst = 0;
  for (int64_t i = 0; i < p.size(); ++i)
    worst = std::max(worst, double(std::fabs(g0[size_t(i)] - p.grads()[i])));
  std::printf(
      "[grads] %s activations: stored %zu bytes, with recomputation %zu bytes (%.1f%% "
      "saved); max|grad diff| %.3g\n",
      GetParam().c_str(), full.activation_bytes, rc.activation_bytes,
      100.0 * (1.0 - double(rc.activation_bytes) / double(full.activation_bytes)), worst);
  EXPECT_LT(rc.activation_bytes, full.activation_bytes);
  EXPECT_LE(worst, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Cases, GradParity, ::testing::Values("tiny-v3", "tiny-v2lite"));

TEST(GradParityMtp, LossTotalAndGradTotal) {
  const std::string dir = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  Ref ref(dir);
  ParamStore p = ParamStore::load(dir);
  TrainModel m(p.config(), p.layout(), p.params(), p.grads());
  TrainOptions o;
  o.mtp_lambda = 0.3;
  o.tie_mtp_embeddings = false;
  StepStats st;
  double loss = m.forward_backward(ref.tokens.data(), ref.B, ref.T, o, &st);
  std::printf(
      "[grads] tiny-v3 MTP: loss_total %.7f reference %.7f; mtp_loss %.7f reference "
      "%.7f\n",
      loss, ref.scalar("train.loss_total"), st.mtp_loss[0], ref.scalar("train.mtp_loss"));
  EXPECT_NEAR(loss, ref.scalar("train.loss_total"), 1e-5);
  EXPECT_NEAR(st.main_loss, ref.scalar("train.loss"), 1e-5);
  EXPECT_NEAR(st.mtp_loss[0], ref.scalar("train.mtp_loss"), 1e-5);
  check_grads(p, ref, "grad_total.", false);
}

TEST(GradParityMtp, TiedEmbeddingsSumTheCopies) {
  const std::string dir = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  Ref ref(dir);
  ParamStore p = ParamStore::load(dir);
  TrainModel m(p.config(), p.layout(), p.params(), p.grads());
  TrainOptions o;
  o.mtp_lambda = 0.3;
  o.tie_mtp_embeddings = true;
  double loss = m.forward_backward(ref.tokens.data(), ref.B, ref.T, o);
  EXPECT_NEAR(loss, ref.scalar("train.loss_total"), 1e-5);
  const std::string L = "model.layers." + std::to_string(p.config().num_hidden_layers) + ".";
  for (auto [main, copy] :
       {std::pair<std::string, std::string>{"model.embed_tokens.weight", L + "embed_tokens.weight"},
        {"lm_head.weight", L + "shared_head.head.weight"}}) {
    auto want = io::read_f32(ref.store.get("grad_total." + main));
    auto add = io::read_f32(ref.store.get("grad_total." + copy));
    for (size_t i = 0; i < want.size(); ++i) want[i] += add[i];
    Err err = compare(p.grad(main), want);
    std::printf("[grads] tied %s: max|err| %.3g, max|ref| %.3g\n", main.c_str(), err.abs,
                err.ref_max);
    EXPECT_LE(err.abs, 1e-4 * err.ref_max) << main;
    // The copies themselves get nothing when tied.
    const float* gc = p.grad(copy);
    for (int64_t i = 0; i < p.layout().get(copy).numel; ++i) ASSERT_EQ(gc[i], 0.0f) << copy;
  }
}

}  // namespace

namespace {
// The sequence-wise balance loss (train/balance.hpp) is wired into every MoE layer: its value is
// reported separately and its gradient reaches the router (and, through the router input, every
// layer below). Checked by central differences in float of the balance term alone, which the
// step reports: α is large so that term dominates its rounding. (The balance loss itself is
// checked against its formula in test_balance.cpp.)
TEST(BalanceLossWiring, GradientMatchesFiniteDifferences) {
  const std::string dir = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  Ref ref(dir);
  ParamStore p = ParamStore::load(dir);
  TrainModel m(p.config(), p.layout(), p.params(), p.grads());
  TrainOptions o;
  o.balance_alpha = 0;
  m.forward_backward(ref.tokens.data(), ref.B, ref.T, o);
  std::vector<float> g0(p.grads(), p.grads() + p.size());
  p.zero_grad();
  o.balance_alpha = 10;
  StepStats st;
  const double loss = m.forward_backward(ref.tokens.data(), ref.B, ref.T, o, &st);
  EXPECT_GT(st.balance_loss, 0);
  EXPECT_NEAR(loss, ref.scalar("train.loss") + st.balance_loss, 1e-5);
  auto bal = [&] {
    StepStats s;
    m.forward_loss(ref.tokens.data(), ref.B, ref.T, o, &s);
    return s.balance_loss;
  };
  const uint64_t seed = 7;
  std::printf("[balance] seed %llu, balance loss %.6f\n", (unsigned long long)seed,
              st.balance_loss);
  Rng r(seed);
  for (const char* name : {"model.layers.1.mlp.gate.weight", "model.layers.2.mlp.gate.weight",
                           "model.layers.1.self_attn.q_a_proj.weight"}) {
    const ParamEntry& e = p.layout().get(name);
    // The largest balance-gradient entry and two random ones.
    int64_t big = 0;
    for (int64_t i = 0; i < e.numel; ++i)
      if (std::fabs(p.grads()[e.offset + i] - g0[size_t(e.offset + i)]) >
          std::fabs(p.grads()[e.offset + big] - g0[size_t(e.offset + big)]))
        big = i;
    for (int64_t i :
         {big, int64_t(r.below(uint64_t(e.numel))), int64_t(r.below(uint64_t(e.numel)))}) {
      float* w = p.params() + e.offset + i;
      const float w0 = *w, h = 1e-3f;
      *w = w0 + h;
      const double lp = bal();
      *w = w0 - h;
      const double lm = bal();
      *w = w0;
      const double fd = (lp - lm) / (double(w0 + h) - double(w0 - h));
      const double an = double(p.grads()[e.offset + i]) - double(g0[size_t(e.offset + i)]);
      std::printf("[balance] %s[%lld]: analytic %.6g fd %.6g\n", name, (long long)i, an, fd);
      // Float differences of a ~20 loss: ~1e-3 absolute noise; routing flips add some more.
      EXPECT_NEAR(an, fd, 1e-2 * std::fabs(fd) + 2e-3) << name << "[" << i << "]";
    }
  }
}
}  // namespace
