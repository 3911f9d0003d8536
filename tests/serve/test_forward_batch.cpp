// The ragged, paged forward (Model::forward_batch) against the slot-contiguous forward: several
// sequences at their own positions, prompts split in chunks, decode tokens, blocks scattered over
// the pool in shuffled order; both attention paths (a 40-token chunk takes the naive one). The
// MTP module over a ragged batch against mtp_forward.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <numeric>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "io/safetensors.hpp"
#include "model/export.hpp"
#include "model/model.hpp"

using namespace dsv3;

namespace {

struct Ref {
  std::vector<float> logits, hidden;  // [T, V], [T, D] of the whole sequence in one forward
};

Ref reference(model::Model& m, const std::vector<int32_t>& seq) {
  const auto& c = m.config();
  const int64_t T = int64_t(seq.size());
  model::KVCache cache(c, 1, T, false);
  Ref r;
  r.logits.resize(size_t(T * c.vocab_size));
  r.hidden.resize(size_t(T * c.hidden_size));
  model::ForwardOptions fo;
  fo.final_hidden = r.hidden.data();
  m.forward(seq.data(), 1, T, 0, cache, r.logits.data(), fo);
  return r;
}

TEST(ForwardBatch, RaggedPagedEqualsForward) {
  for (const char* name : {"tiny-v3", "tiny-v2lite"}) {
    auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/" + name);
    const auto& c = m->config();
    const int64_t V = c.vocab_size, bt = 4;
    const uint64_t seed = 16;
    std::printf("%s seed %llu\n", name, (unsigned long long)seed);
    Rng rng(seed);
    // Three sequences: 9 tokens (chunks 5 + 4), 6 tokens (5 prefill + 1 decode), 41 tokens
    // (40 in one naive chunk + 1 decode).
    std::vector<std::vector<int32_t>> seqs = {std::vector<int32_t>(9), std::vector<int32_t>(6),
                                              std::vector<int32_t>(41)};
    for (auto& s : seqs)
      for (auto& t : s) t = int32_t(rng.below(uint64_t(V)));
    // Block tables over a pool of 24 blocks in shuffled order.
    std::vector<int32_t> ids(24);
    std::iota(ids.begin(), ids.end(), 0);
    for (size_t i = ids.size() - 1; i > 0; --i) std::swap(ids[i], ids[rng.below(i + 1)]);
    std::vector<std::vector<int32_t>> tables = {
        {ids[0], ids[1], ids[2]},
        {ids[3], ids[4]},
        std::vector<int32_t>(ids.begin() + 5, ids.begin() + 16)};
    model::KVCache cache(c, 24, bt, false);
    // Per step: (sequence, start, len).
    const std::vector<std::vector<std::array<int64_t, 3>>> steps = {
        {{0, 0, 5}, {1, 0, 5}, {2, 0, 40}}, {{0, 5, 4}, {1, 5, 1}, {2, 40, 1}}};
    std::vector<std::vector<float>> got(3);
    for (size_t i = 0; i < 3; ++i) got[i].resize(seqs[i].size() * size_t(V));
    for (const auto& st : steps) {
      std::vector<int32_t> tok;
      std::vector<model::SeqSpan> spans;
      for (const auto& [s, start, len] : st) {
        for (int64_t t = 0; t < len; ++t) tok.push_back(seqs[size_t(s)][size_t(start + t)]);
        spans.push_back({start, len, tables[size_t(s)].data(), int64_t(tables[size_t(s)].size())});
      }
      std::vector<float> logits(tok.size() * size_t(V));
      m->forward_batch(tok.data(), spans, cache, logits.data(), nullptr, int64_t(tok.size()));
      int64_t row = 0;
      for (const auto& [s, start, len] : st)
        for (int64_t t = 0; t < len; ++t, ++row)
          std::copy_n(logits.data() + row * V, V, got[size_t(s)].data() + (start + t) * V);
    }
    for (size_t s = 0; s < 3; ++s) {
      const Ref r = reference(*m, seqs[s]);
      float worst = 0;
      for (size_t i = 0; i < r.logits.size(); ++i)
        worst = std::max(worst, std::abs(r.logits[i] - got[s][i]));
      EXPECT_LT(worst, 1e-4f) << name << " sequence " << s;
    }
  }
}

TEST(ForwardBatch, MtpRaggedEqualsMtpForward) {
  auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  ASSERT_TRUE(m->has_mtp());
  const auto& c = m->config();
  const int64_t V = c.vocab_size, D = c.hidden_size, T = 11, bt = 4;
  Rng rng(7);
  std::printf("seed 7\n");
  std::vector<int32_t> seq(size_t(T + 1));
  for (auto& t : seq) t = int32_t(rng.below(uint64_t(V)));
  // Reference: main forward over T tokens, then the MTP module over the same positions with the
  // following tokens, in one call on a contiguous cache.
  model::KVCache ref_cache(c, 1, T, true);
  std::vector<float> logits(size_t(T * V)), hidden(size_t(T * D)), want(size_t(T * V));
  model::ForwardOptions fo;
  fo.final_hidden = hidden.data();
  m->forward(seq.data(), 1, T, 0, ref_cache, logits.data(), fo);
  m->mtp_forward(hidden.data(), seq.data() + 1, 1, T, 0, ref_cache, want.data());
  // Paged: the MTP module in two chunks (7 + 4) through a scattered block table.
  model::KVCache cache(c, 8, bt, true);
  const std::vector<int32_t> table = {5, 2, 7};
  std::vector<float> got(size_t(T * V));
  for (const auto& [start, len] : {std::pair<int64_t, int64_t>{0, 7}, {7, 4}}) {
    const model::SeqSpan span{start, len, table.data(), 3};
    m->forward_batch(seq.data() + start, {&span, 1}, cache, logits.data(), nullptr, len, fo);
    m->mtp_forward_batch(hidden.data(), seq.data() + start + 1, {&span, 1}, cache,
                         got.data() + start * V, nullptr, len);
  }
  float worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(want[i] - got[i]));
  EXPECT_LT(worst, 1e-4f);
}

// The MTP module asked for the last tokens' logits only (a draft step) runs the layer on those
// tokens alone and writes only the cache entries of the others: the same logits as the call
// asking for every row, and the same cache (a next step over it gives the same logits). Three
// sequences over scattered blocks; the middle one asks for nothing (cache entries only).
TEST(ForwardBatch, MtpLastRowsEqualAllRows) {
  auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  ASSERT_TRUE(m->has_mtp());
  const auto& c = m->config();
  const int64_t V = c.vocab_size, D = c.hidden_size, bt = 4;
  const uint64_t seed = 23;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const std::array<int64_t, 3> lens = {6, 4, 2};
  const std::array<std::vector<int32_t>, 3> tables = {
      std::vector<int32_t>{3, 9}, std::vector<int32_t>{0, 6}, std::vector<int32_t>{10}};
  std::vector<model::SeqSpan> spans, next_spans;
  for (size_t i = 0; i < 3; ++i) {
    spans.push_back({0, lens[i], tables[i].data(), int64_t(tables[i].size())});
    next_spans.push_back({lens[i], 1, tables[i].data(), int64_t(tables[i].size())});
  }
  const int64_t N = 12;
  std::vector<float> hidden(size_t((N + 3) * D));
  for (auto& h : hidden) h = float(rng.normal());
  std::vector<int32_t> next(size_t(N + 3));
  for (auto& t : next) t = int32_t(rng.below(uint64_t(V)));
  model::KVCache all_cache(c, 12, bt, true), last_cache(c, 12, bt, true);
  std::vector<float> all(size_t(N * V)), last(size_t(2 * V));
  m->mtp_forward_batch(hidden.data(), next.data(), spans, all_cache, all.data(), nullptr, N);
  const int64_t rows[2] = {5, 11};  // the last tokens of sequences 0 and 2
  m->mtp_forward_batch(hidden.data(), next.data(), spans, last_cache, last.data(), rows, 2);
  float worst = 0;
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t v = 0; v < V; ++v)
      worst = std::max(worst, std::abs(all[size_t(rows[r] * V + v)] - last[size_t(r * V + v)]));
  EXPECT_LT(worst, 1e-4f);
  // The next token of every sequence over each cache.
  std::vector<float> a(size_t(3 * V)), b(size_t(3 * V));
  m->mtp_forward_batch(hidden.data() + N * D, next.data() + N, next_spans, all_cache, a.data(),
                       nullptr, 3);
  m->mtp_forward_batch(hidden.data() + N * D, next.data() + N, next_spans, last_cache, b.data(),
                       nullptr, 3);
  worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  EXPECT_LT(worst, 1e-4f);
  // A row that is not a last token takes the general path.
  const int64_t mid = 2;
  std::vector<float> one(static_cast<size_t>(V));
  m->mtp_forward_batch(hidden.data(), next.data(), spans, last_cache, one.data(), &mid, 1);
  worst = 0;
  for (int64_t v = 0; v < V; ++v)
    worst = std::max(worst, std::abs(all[size_t(mid * V + v)] - one[size_t(v)]));
  EXPECT_LT(worst, 1e-4f);
}

// A decode step of several sequences under Compute::BF16 (the batched-decode path: spin team,
// skinny BF16 products where the weight is BF16, whole experts per thread, all sequences' heads
// in one region) against each sequence's decode step alone (one token: the GEMV path, FP32
// products). The batch rounds activations to BF16, so the bound is BF16's (relative 2⁻⁷ of the
// logits' scale), not 1e-4; a wrong row, expert or head is off by the logits' own magnitude.
// One decode step of B sequences under `compute` against each sequence's step alone; returns
// the worst |batch - alone| over each sequence's logits and the largest |logit| alone.
std::vector<std::pair<float, float>> decode_batch_vs_alone(
    cpu::Compute compute, const std::string& dir = std::string(DSV3_TEST_DATA) + "/tiny-v3") {
  model::LoadOptions lo;
  lo.compute = compute;
  auto m = model::Model::load(dir, lo);
  const auto& c = m->config();
  const int64_t V = c.vocab_size, bt = 4, B = 5;
  const uint64_t seed = 1606;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    seqs[size_t(b)].resize(size_t(3 + 2 * b));
    for (auto& t : seqs[size_t(b)]) t = int32_t(rng.below(uint64_t(V)));
  }
  // Each sequence's prompt (all but its last token) alone into its own blocks of both caches.
  model::KVCache batch_cache(c, 4 * B, bt, false), alone_cache(c, 4 * B, bt, false);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < 4; ++j) tables[size_t(b)].push_back(int32_t(b * 4 + j));
  std::vector<float> logits(size_t(16 * V));  // a prompt's rows (up to 10), then the B rows
  for (int64_t b = 0; b < B; ++b) {
    const auto& q = seqs[size_t(b)];
    const model::SeqSpan span{0, int64_t(q.size()) - 1, tables[size_t(b)].data(), 4};
    for (model::KVCache* kc : {&batch_cache, &alone_cache})
      m->forward_batch(q.data(), {&span, 1}, *kc, logits.data(), nullptr, span.len);
  }
  // The last tokens: one step of all B sequences, then each alone.
  std::vector<int32_t> tok;
  std::vector<model::SeqSpan> spans;
  for (int64_t b = 0; b < B; ++b) {
    const auto& q = seqs[size_t(b)];
    tok.push_back(q.back());
    spans.push_back({int64_t(q.size()) - 1, 1, tables[size_t(b)].data(), 4});
  }
  m->forward_batch(tok.data(), spans, batch_cache, logits.data(), nullptr, B);
  std::vector<float> alone(static_cast<size_t>(V));
  std::vector<std::pair<float, float>> out;
  for (int64_t b = 0; b < B; ++b) {
    m->forward_batch(tok.data() + b, {&spans[size_t(b)], 1}, alone_cache, alone.data(), nullptr, 1);
    float worst = 0, scale = 0;
    for (int64_t v = 0; v < V; ++v) {
      worst = std::max(worst, std::abs(alone[size_t(v)] - logits[size_t(b * V + v)]));
      scale = std::max(scale, std::abs(alone[size_t(v)]));
    }
    std::printf("sequence %lld: worst |batch - alone| %.3g, max |logit| %.3g\n", (long long)b,
                double(worst), double(scale));
    out.push_back({worst, scale});
  }
  return out;
}

TEST(ForwardBatch, Bf16DecodeBatchEqualsAlone) {
  const auto r = decode_batch_vs_alone(cpu::Compute::BF16);
  for (size_t b = 0; b < r.size(); ++b)
    EXPECT_LT(r[b].first, 0.03f * r[b].second) << "sequence " << b;
}

// The same under Compute::F32: the batched step's products are FP32 (sgemm for the 5 rows, the
// GEMV alone) and its attention is the batched absorbed decode (query absorption and W_UV of all
// sequences head by head), so the logits agree to FP32 rounding.
TEST(ForwardBatch, F32DecodeBatchEqualsAlone) {
  const auto r = decode_batch_vs_alone(cpu::Compute::F32);
  for (size_t b = 0; b < r.size(); ++b) EXPECT_LT(r[b].first, 1e-4f) << "sequence " << b;
}

// The same on tiny-v3 exported with FP8 weights (kv_b_proj included: the batched attention reads
// its W_UK / W_UV slices as FP8 codes), under both computes, with each one's bound above.
TEST(ForwardBatch, Fp8DecodeBatchEqualsAlone) {
  const std::string src = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("dsv3_test_fp8_batch_" + std::to_string(::getpid())))
                              .string();
  auto store = io::TensorStore::open_dir(src);
  model::ExportOptions o8;
  o8.dtype = DType::F8_E4M3;
  model::save_hf_checkpoint(
      dir, model::load_config(src),
      [&](const model::ParamSpec& ps, float* dst) {
        auto v = io::read_f32(store.get(ps.name, ps.shape));
        std::copy(v.begin(), v.end(), dst);
      },
      o8);
  const auto f32 = decode_batch_vs_alone(cpu::Compute::F32, dir);
  const auto bf16 = decode_batch_vs_alone(cpu::Compute::BF16, dir);
  std::filesystem::remove_all(dir);
  for (size_t b = 0; b < f32.size(); ++b) {
    EXPECT_LT(f32[b].first, 1e-4f) << "F32, sequence " << b;
    EXPECT_LT(bf16[b].first, 0.03f * bf16[b].second) << "BF16, sequence " << b;
  }
}

TEST(ForwardBatch, BadBlockTableIsAnError) {
  auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  const auto& c = m->config();
  model::KVCache cache(c, 4, 4, false);
  const std::vector<int32_t> table = {1, 9};  // block 9 is outside the pool
  const std::vector<int32_t> tok(6, 3);
  std::vector<float> logits(size_t(6 * c.vocab_size));
  const model::SeqSpan span{0, 6, table.data(), 2};
  EXPECT_THROW(m->forward_batch(tok.data(), {&span, 1}, cache, logits.data(), nullptr, 6), Error);
  const model::SeqSpan short_table{0, 6, table.data(), 1};  // 6 positions in one 4-block
  EXPECT_THROW(m->forward_batch(tok.data(), {&short_table, 1}, cache, logits.data(), nullptr, 6),
               Error);
}

}  // namespace
