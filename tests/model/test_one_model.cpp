// One model: the inference forward (model::Model) run on a training ParamStore without copying
// equals the training forward (model::TrainModel) on the same arena, and equals the inference
// model loaded from that store's F32 export. Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <cstdio>

#include <filesystem>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "model/model.hpp"
#include "train/params.hpp"

using namespace dsv3;

namespace {

struct Fixture {
  model::ModelConfig c;
  train::ParamStore store;
  std::vector<int32_t> tokens;
  int64_t B = 2, T = 37;  // T >= kNaiveMinTokens: the same (naive) attention path as training

  explicit Fixture(uint64_t seed)
      : c(model::load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3")), store(c) {
    std::printf("[one-model] seed %llu\n", (unsigned long long)seed);
    store.init_random(seed);
    // Non-trivial norms and a routing bias that changes the selection.
    Rng r(seed + 1);
    for (const auto& e : store.entries()) {
      float* p = store.param(e.name);
      if (e.role == model::ParamRole::Norm)
        for (int64_t i = 0; i < e.numel; ++i) p[i] = float(1 + 0.2 * r.normal());
      if (e.role == model::ParamRole::RouterBias)
        for (int64_t i = 0; i < e.numel; ++i) p[i] = float(0.05 * r.normal());
    }
    tokens.resize(size_t(B * T));
    for (auto& t : tokens) t = int32_t(r.below(uint64_t(c.vocab_size)));
  }
};

// Mean next-token cross-entropy of logits [B, T, V], in double.
double mean_ce(const std::vector<float>& logits, const std::vector<int32_t>& tokens, int64_t B,
               int64_t T, int64_t V) {
  double sum = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const float* l = logits.data() + (b * T + t) * V;
      double mx = l[0], z = 0;
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      sum += mx + std::log(z) - double(l[tokens[size_t(b * T + t + 1)]]);
    }
  return sum / double(B * (T - 1));
}

TEST(OneModel, InferenceOnTrainingStoreEqualsTrainingForward) {
  Fixture f(2026);
  const int64_t V = f.c.vocab_size;
  model::TrainModel tm(f.c, f.store.layout(), f.store.params(), f.store.grads());
  model::StepStats st;
  tm.forward_loss(f.tokens.data(), f.B, f.T, model::TrainOptions{}, &st);

  auto m = model::Model::view(f.c, f.store.layout(), f.store.params(), false);
  model::KVCache cache(f.c, f.B, f.T, false);
  std::vector<float> logits(size_t(f.B * f.T * V));
  m->forward(f.tokens.data(), f.B, f.T, 0, cache, logits.data());
  const double from_logits = mean_ce(logits, f.tokens, f.B, f.T, V);
  int64_t count = 0;
  const double ce = m->cross_entropy(f.tokens.data(), f.B, f.T, cache, &count) / double(count);
  std::printf("[one-model] training CE %.9f, inference CE from logits %.9f, chunked %.9f\n",
              st.main_loss, from_logits, ce);
  EXPECT_EQ(count, f.B * (f.T - 1));
  EXPECT_NEAR(from_logits, st.main_loss, 1e-6 * st.main_loss);
  EXPECT_NEAR(ce, st.main_loss, 1e-6 * st.main_loss);
  // The view reads the arena in place: a changed parameter changes its output.
  f.store.param("lm_head.weight")[0] += 1.0f;
  std::vector<float> again(logits.size());
  m->forward(f.tokens.data(), f.B, f.T, 0, cache, again.data());
  EXPECT_NE(again[0], logits[0]);
}

TEST(OneModel, ArenaViewEqualsLoadedExport) {
  Fixture f(7);
  const int64_t V = f.c.vocab_size;
  const auto dir = std::filesystem::temp_directory_path() /
                   ("dsv3-test-one-model-" + std::to_string(::getpid()));
  f.store.save(dir.string(), DType::F32);
  auto loaded = model::Model::load(dir.string());
  auto view = model::Model::view(f.c, f.store.layout(), f.store.params(), true, false);
  ASSERT_TRUE(loaded->has_mtp());
  ASSERT_TRUE(view->has_mtp());
  for (int64_t T : {int64_t(5), f.T}) {  // absorbed and naive attention
    model::KVCache c1(f.c, f.B, T, true), c2(f.c, f.B, T, true);
    std::vector<float> a(size_t(f.B * T * V)), b(a.size());
    std::vector<float> ha(size_t(f.B * T * f.c.hidden_size)), hb(ha.size());
    model::ForwardOptions oa, ob;
    oa.final_hidden = ha.data();
    ob.final_hidden = hb.data();
    std::vector<int32_t> tok(size_t(f.B * T));
    for (int64_t i = 0; i < f.B; ++i)
      std::copy_n(f.tokens.begin() + i * f.T, T, tok.begin() + i * T);
    loaded->forward(tok.data(), f.B, T, 0, c1, a.data(), oa);
    view->forward(tok.data(), f.B, T, 0, c2, b.data(), ob);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "T " << T << " logit " << i;
    // The MTP module on the same hidden states and next tokens.
    std::vector<int32_t> next(tok.size());
    for (size_t i = 0; i < tok.size(); ++i) next[i] = tok[(i + 1) % tok.size()];
    loaded->mtp_forward(ha.data(), next.data(), f.B, T, 0, c1, a.data());
    view->mtp_forward(hb.data(), next.data(), f.B, T, 0, c2, b.data());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "T " << T << " MTP logit " << i;
  }
  std::filesystem::remove_all(dir);
}

// What `dsv3 eval` computes: the inference model on a BF16 checkpoint as stored gives the loss
// the training forward gives on the same checkpoint read into an FP32 arena.
TEST(OneModel, CrossEntropyOnBf16CheckpointEqualsTrainingLoss) {
  Fixture f(11);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("dsv3-test-one-model-bf16-" + std::to_string(::getpid()));
  f.store.save(dir.string(), DType::BF16);
  model::LoadOptions lo;
  lo.load_mtp = false;
  auto m = model::Model::load(dir.string(), lo);
  model::KVCache cache(f.c, f.B, f.T, false);
  int64_t count = 0;
  const double ce = m->cross_entropy(f.tokens.data(), f.B, f.T, cache, &count) / double(count);
  train::ParamStore p = train::ParamStore::load(dir.string());
  model::TrainModel tm(p.config(), p.layout(), p.params(), p.grads());
  const double want = tm.forward_loss(f.tokens.data(), f.B, f.T, model::TrainOptions{});
  std::printf("[one-model] BF16 checkpoint: inference CE %.9f, training loss %.9f\n", ce, want);
  EXPECT_NEAR(ce, want, 1e-5 * want);
  std::filesystem::remove_all(dir);
}

// A checkpoint with a NaN weight is refused by both loaders with the tensor's name.
TEST(OneModel, LoadersRefuseNonFiniteWeights) {
  Fixture f(3);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("dsv3-test-one-model-nan-" + std::to_string(::getpid()));
  const std::string name = "model.layers.1.mlp.gate.e_score_correction_bias";
  f.store.param(name)[2] = NAN;
  f.store.save(dir.string(), DType::F32);
  for (int which = 0; which < 2; ++which) {
    try {
      if (which == 0)
        model::Model::load(dir.string());
      else
        train::ParamStore::load(dir.string());
      ADD_FAILURE() << (which == 0 ? "Model::load" : "ParamStore::load") << " accepted a NaN";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
