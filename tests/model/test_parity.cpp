// Model parity against the golden outputs of DeepSeek's official PyTorch inference code
// (tests/data/tiny-*/reference.safetensors, see tests/data/REFERENCE.md): prefill logits at
// every position on both attention paths, hidden states, routing of every MoE layer, KV-cache
// decode steps, chunked prefill and the MTP logits. FP32 compute; tolerance 1e-4 absolute.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "io/safetensors.hpp"
#include "model/model.hpp"
#include "model/rope.hpp"

using namespace dsv3;
using namespace dsv3::model;

namespace {

struct Case {
  std::string name;
  std::string dir() const { return std::string(DSV3_TEST_DATA) + "/" + name; }
};

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

class Parity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = std::string(DSV3_TEST_DATA) + "/" + GetParam();
    ref_ = io::TensorStore::open_file(dir_ + "/reference.safetensors");
    model_ = Model::load(dir_);
    const auto& t = ref_.get("tokens");
    B_ = t.shape[0];
    T_ = t.shape[1];
    tokens_ = io::read_i32(t);
  }
  std::vector<float> ref(const std::string& n) { return io::read_f32(ref_.get(n)); }

  std::vector<float> prefill(AttnImpl impl, std::vector<float>* hidden = nullptr,
                             std::vector<Routing>* routes = nullptr) {
    const auto& c = model_->config();
    KVCache cache(c, B_, c.max_position_embeddings, model_->has_mtp());
    std::vector<float> logits(size_t(B_ * T_ * c.vocab_size));
    ForwardOptions o;
    o.attn = impl;
    if (hidden) {
      hidden->resize(size_t(B_ * T_ * c.hidden_size));
      o.final_hidden = hidden->data();
    }
    o.routes = routes;
    model_->forward(tokens_.data(), B_, T_, 0, cache, logits.data(), o);
    return logits;
  }

  std::string dir_;
  io::TensorStore ref_;
  std::unique_ptr<Model> model_;
  int64_t B_ = 0, T_ = 0;
  std::vector<int32_t> tokens_;
};

TEST_P(Parity, RopeTable) {
  auto want = ref("rope.freqs_cis_real_imag");
  auto got = rope_cos_sin(model_->config(), T_);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LE(max_abs_diff(got.data(), want.data(), got.size()), 1e-5f);
}

TEST_P(Parity, PrefillLogitsBothPaths) {
  std::vector<float> hidden;
  auto absorbed = prefill(AttnImpl::Absorbed, &hidden);
  auto want = ref("prefill.logits");
  ASSERT_EQ(absorbed.size(), want.size());
  float d = max_abs_diff(absorbed.data(), want.data(), want.size());
  std::printf("%s absorbed prefill max|d| = %.3g\n", GetParam().c_str(), d);
  EXPECT_LE(d, 1e-4f);
  auto hn = ref("prefill.hidden.final_norm");
  EXPECT_LE(max_abs_diff(hidden.data(), hn.data(), hn.size()), 1e-4f);

  auto naive = prefill(AttnImpl::Naive);
  auto want_n = ref("prefill.logits_naive");
  d = max_abs_diff(naive.data(), want_n.data(), want_n.size());
  std::printf("%s naive prefill max|d| = %.3g\n", GetParam().c_str(), d);
  EXPECT_LE(d, 1e-4f);
}

TEST_P(Parity, RoutingSetsAndWeights) {
  std::vector<Routing> routes;
  prefill(AttnImpl::Absorbed, nullptr, &routes);
  const auto& c = model_->config();
  size_t mi = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    ASSERT_LT(mi, routes.size());
    const Routing& r = routes[mi++];
    std::string p = "route.layer" + std::to_string(l) + ".";
    auto idx = io::read_i32(ref_.get(p + "indices"));
    auto wts = ref(p + "weights");
    auto scores = ref(p + "scores");
    const int64_t K = c.num_experts_per_tok, N = B_ * T_;
    ASSERT_EQ(int64_t(idx.size()), N * K);
    EXPECT_LE(max_abs_diff(r.scores.data(), scores.data(), scores.size()), 1e-5f);
    for (int64_t n = 0; n < N; ++n) {
      std::set<int32_t> a(r.indices.begin() + n * K, r.indices.begin() + (n + 1) * K);
      std::set<int32_t> b(idx.begin() + n * K, idx.begin() + (n + 1) * K);
      ASSERT_EQ(a, b) << "layer " << l << " token " << n;
      for (int64_t k = 0; k < K; ++k) {
        int64_t j =
            std::find(idx.begin() + n * K, idx.begin() + (n + 1) * K, r.indices[n * K + k]) -
            (idx.begin() + n * K);
        EXPECT_NEAR(r.weights[n * K + k], wts[n * K + j], 1e-5f);
      }
    }
  }
  EXPECT_EQ(mi, routes.size());
}

TEST_P(Parity, DecodeStepsOnLatentCache) {
  const auto& c = model_->config();
  const int64_t V = c.vocab_size;
  auto positions = io::read_i32(ref_.get("decode.positions"));
  for (AttnImpl impl : {AttnImpl::Absorbed, AttnImpl::Naive}) {
    auto want = ref(impl == AttnImpl::Absorbed ? "decode.logits" : "decode.logits_naive");
    KVCache cache(c, B_, c.max_position_embeddings, false);
    ForwardOptions o;
    o.attn = impl;
    o.all_logits = false;
    const int64_t P = positions[0] + 1;
    std::vector<int32_t> chunk(size_t(B_ * P));
    for (int64_t b = 0; b < B_; ++b)
      std::copy(tokens_.begin() + b * T_, tokens_.begin() + b * T_ + P, chunk.begin() + b * P);
    std::vector<float> logits(size_t(B_ * V));
    model_->forward(chunk.data(), B_, P, 0, cache, logits.data(), o);
    float worst = max_abs_diff(logits.data(), want.data(), size_t(B_ * V));
    for (size_t j = 1; j < positions.size(); ++j) {
      const int64_t pos = positions[j];
      std::vector<int32_t> tok(static_cast<size_t>(B_));
      for (int64_t b = 0; b < B_; ++b) tok[size_t(b)] = tokens_[size_t(b * T_ + pos)];
      model_->forward(tok.data(), B_, 1, pos, cache, logits.data(), o);
      worst =
          std::max(worst, max_abs_diff(logits.data(), want.data() + j * B_ * V, size_t(B_ * V)));
    }
    std::printf("%s decode (%s) max|d| = %.3g\n", GetParam().c_str(),
                impl == AttnImpl::Absorbed ? "absorbed" : "naive", worst);
    EXPECT_LE(worst, 1e-4f);
  }
}

TEST_P(Parity, ChunkedPrefillMatchesFullPrefill) {
  const auto& c = model_->config();
  const int64_t V = c.vocab_size;
  auto want = ref("prefill.logits");
  for (AttnImpl impl : {AttnImpl::Absorbed, AttnImpl::Naive}) {
    KVCache cache(c, B_, c.max_position_embeddings, false);
    ForwardOptions o;
    o.attn = impl;
    const int64_t cuts[] = {0, 33, 34, 61, T_};
    float worst = 0;
    for (int i = 0; i + 1 < 5; ++i) {
      const int64_t s = cuts[i], n = cuts[i + 1] - cuts[i];
      std::vector<int32_t> chunk(size_t(B_ * n));
      for (int64_t b = 0; b < B_; ++b)
        std::copy(tokens_.begin() + b * T_ + s, tokens_.begin() + b * T_ + s + n,
                  chunk.begin() + b * n);
      std::vector<float> logits(size_t(B_ * n * V));
      model_->forward(chunk.data(), B_, n, s, cache, logits.data(), o);
      for (int64_t b = 0; b < B_; ++b)
        worst = std::max(worst, max_abs_diff(logits.data() + b * n * V,
                                             want.data() + (b * T_ + s) * V, size_t(n * V)));
    }
    std::printf("%s chunked prefill max|d| = %.3g\n", GetParam().c_str(), worst);
    EXPECT_LE(worst, 1e-4f);
  }
}

TEST_P(Parity, MtpLogits) {
  if (!ref_.find("mtp.logits")) GTEST_SKIP() << "no MTP reference for " << GetParam();
  ASSERT_TRUE(model_->has_mtp());
  const auto& c = model_->config();
  const int64_t D = c.hidden_size, V = c.vocab_size, T1 = T_ - 1;
  std::vector<float> hidden;
  prefill(AttnImpl::Absorbed, &hidden);
  std::vector<float> h(size_t(B_ * T1 * D));
  std::vector<int32_t> next(size_t(B_ * T1));
  for (int64_t b = 0; b < B_; ++b) {
    std::copy(hidden.begin() + b * T_ * D, hidden.begin() + (b * T_ + T1) * D,
              h.begin() + b * T1 * D);
    std::copy(tokens_.begin() + b * T_ + 1, tokens_.begin() + (b + 1) * T_, next.begin() + b * T1);
  }
  KVCache cache(c, B_, c.max_position_embeddings, true);
  std::vector<float> logits(size_t(B_ * T1 * V)), out(size_t(B_ * T1 * D));
  std::vector<Routing> routes;
  ForwardOptions o;
  o.routes = &routes;
  model_->mtp_forward(h.data(), next.data(), B_, T1, 0, cache, logits.data(), o, out.data());
  auto want = ref("mtp.logits");
  float d = max_abs_diff(logits.data(), want.data(), want.size());
  std::printf("%s MTP logits max|d| = %.3g\n", GetParam().c_str(), d);
  EXPECT_LE(d, 1e-4f);
  auto hout = ref("mtp.hidden_out");
  EXPECT_LE(max_abs_diff(out.data(), hout.data(), hout.size()), 1e-4f);
  ASSERT_EQ(routes.size(), 1u);
  auto idx = io::read_i32(ref_.get("route.mtp.indices"));
  const int64_t K = c.num_experts_per_tok;
  for (int64_t n = 0; n < B_ * T1; ++n) {
    std::set<int32_t> a(routes[0].indices.begin() + n * K, routes[0].indices.begin() + (n + 1) * K);
    std::set<int32_t> b(idx.begin() + n * K, idx.begin() + (n + 1) * K);
    ASSERT_EQ(a, b) << "MTP token " << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, Parity, ::testing::Values("tiny-v3", "tiny-v2lite"));

}  // namespace
