// Long-context decode: the absorbed path's decode kernels (few-row products over the latent
// cache, heads split over the threads) at more positions than the reference files' 256. On
// tiny-v3 with max_position_embeddings raised to 1024, single-token absorbed steps after a
// 700-token prompt must give the logits of one naive prefill over the same tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.hpp"
#include "io/file.hpp"
#include "model/model.hpp"
#include "train/temp_dir.hpp"

using namespace dsv3;
using namespace dsv3::model;
namespace fs = std::filesystem;

TEST(LongContext, AbsorbedDecodeMatchesNaivePrefill) {
  const std::string src = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  train::testing::TempDir dir("long_context");
  auto cfg = nlohmann::json::parse(io::read_file(src + "/config.json"));
  cfg["max_position_embeddings"] = 1024;
  std::ofstream(dir / "config.json") << cfg.dump(2);
  fs::copy_file(src + "/model.safetensors", dir / "model.safetensors");
  auto m = Model::load(dir.str());
  const auto& c = m->config();
  const int64_t P = 700, steps = 3, T = P + steps, V = c.vocab_size;
  const uint64_t seed = 5;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  std::vector<int32_t> toks(static_cast<size_t>(T));
  for (auto& t : toks) t = int32_t(rng.below(uint64_t(V)));

  // Reference: one naive prefill over all T tokens, logits at every position.
  std::vector<float> want(size_t(T * V));
  {
    KVCache cache(c, 1, T, false);
    ForwardOptions o;
    o.attn = AttnImpl::Naive;
    m->forward(toks.data(), 1, T, 0, cache, want.data(), o);
  }
  KVCache cache(c, 1, T, false);
  ForwardOptions o;
  o.all_logits = false;
  std::vector<float> logits(static_cast<size_t>(V));
  o.attn = AttnImpl::Naive;
  m->forward(toks.data(), 1, P, 0, cache, logits.data(), o);
  o.attn = AttnImpl::Absorbed;
  float worst = 0;
  for (int64_t s = 0; s < steps; ++s) {
    m->forward(&toks[size_t(P + s)], 1, 1, P + s, cache, logits.data(), o);
    for (int64_t v = 0; v < V; ++v)
      worst = std::max(worst, std::fabs(logits[size_t(v)] - want[size_t((P + s) * V + v)]));
  }
  std::printf("absorbed decode at %lld..%lld vs naive prefill: max|d| = %.3g\n", (long long)P,
              (long long)(T - 1), worst);
  EXPECT_LE(worst, 1e-4f);
}
