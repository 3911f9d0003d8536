// `dsv3 train` on many ranks (issue 14), run by test_dist at 1, 2 and 4 ranks: every layout of
// the job's size (2 ranks: DP only and EP only; 4 ranks: DP x EP 2 x 2) trains the same global
// batch as one process and must give the same per-step losses (1e-5 relative, 20 steps), the
// same global expert loads and the same validation loss; a sharded checkpoint written at step 10
// resumes to step 20 with the same losses bit for bit; `dsv3 export` gathers the shards into the
// same model as the run's own final export; bad layouts are refused before any work.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "../train/test_trainer_util.hpp"
#include "comm_env.hpp"
#include "io/safetensors.hpp"
#include "train/checkpoint.hpp"
#include "train/export.hpp"
#include "train/metrics.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;
using namespace dsv3;
using namespace dsv3::train;

namespace {

TrainConfig dist_config(const std::string& root) {
  TrainConfig c;
  if (g_comm->rank() == 0) dsv3::train::testing::write_corpus(root + "/corpus");
  g_comm->barrier();
  c.data = {root + "/corpus"};
  c.vocab_size = 512;
  c.steps = 20;
  c.batch = 4;
  c.seq_len = 32;
  c.threads = 1;
  c.lr = 3e-3;
  // FP32 moments: the split batch sums each gradient in another order (1e-7 relative), and BF16
  // moments would round such a difference up to 2^-8 of an update now and then, which moves a
  // near-tied routing decision within a few steps; the layouts are tested, not BF16's rounding
  // (the ZeRO-1 tests cover BF16 moments).
  c.moments = "f32";
  c.checkpoint_every = 10;
  c.eval_every = 0;
  c.eval_batches = 1;
  c.sample_prompts = {"The cat"};
  c.sample_tokens = 4;
  c.val_fraction = 0.05;
  // tiny_config's model (test_trainer_util.hpp): 8 routed experts of 32, top-4 in groups, MTP.
  c.model = {{"hidden_size", 64},      {"intermediate_size", 128}, {"moe_intermediate_size", 32},
             {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 2},
             {"q_lora_rank", 32},      {"kv_lora_rank", 32},       {"qk_nope_head_dim", 16},
             {"qk_rope_head_dim", 8},  {"v_head_dim", 16},         {"max_position_embeddings", 64}};
  return c;
}

// Every rank agrees on failure: the test fails everywhere when it fails on rank 0.
bool agree(bool ok) {
  int32_t v = ok ? 1 : 0;
  g_comm->all_reduce(&v, 1, DType::I32, dist::ReduceOp::Min);
  return v != 0;
}

}  // namespace

TEST(DistTrain, LayoutsMatchOneProcessAndResumeExactly) {
  const int P = g_comm->size();
  if (P == 1) GTEST_SKIP() << "needs mpirun -np 2 or 4";
  const std::string root = job_dir("dist-layouts");
  TrainConfig cfg = dist_config(root);
  // The reference: one process, the same global batch (rank 0 runs it; the tokenizer it trains
  // is reused by every run below).
  if (g_comm->rank() == 0) {
    RunOptions r;
    r.run_dir = root + "/ref";
    r.quiet = true;
    r.overwrite = true;
    ASSERT_TRUE(Trainer(cfg, r).run().finished);
  }
  g_comm->barrier();
  cfg.tokenizer = root + "/ref/tokenizer";
  const MetricsLog ref =
      g_comm->rank() == 0 ? read_metrics(root + "/ref/metrics.jsonl") : MetricsLog{};

  std::vector<std::pair<int64_t, int64_t>> layouts;  // (dp, ep)
  if (P == 2) layouts = {{2, 1}, {1, 2}};
  if (P == 4) layouts = {{2, 2}};
  for (const auto& [dp, ep] : layouts) {
    SCOPED_TRACE(fmt::format("dp {} x ep {}", dp, ep));
    cfg.dp = dp;
    cfg.ep = ep;
    RunOptions r;
    r.run_dir = fmt::format("{}/dp{}-ep{}", root, dp, ep);
    r.quiet = true;
    r.comm = g_comm;
    const TrainResult res = Trainer(cfg, r).run();
    EXPECT_TRUE(res.finished);
    bool ok = true;
    if (g_comm->rank() == 0) {
      const MetricsLog m = read_metrics(r.run_dir + "/metrics.jsonl");
      EXPECT_EQ(m.steps.size(), ref.steps.size());
      for (size_t i = 0; i < std::min(m.steps.size(), ref.steps.size()); ++i) {
        const double a = m.steps[i].loss, b = ref.steps[i].loss;
        EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << "step " << i + 1;
        EXPECT_EQ(m.steps[i].expert_load, ref.steps[i].expert_load) << "step " << i + 1;
        ok = ok && std::abs(a - b) <= 1e-5 * std::abs(b) &&
             m.steps[i].expert_load == ref.steps[i].expert_load;
      }
      ASSERT_EQ(m.evals.size(), ref.evals.size());
      EXPECT_NEAR(m.evals.back().val_loss, ref.evals.back().val_loss,
                  1e-5 * ref.evals.back().val_loss);
      double worst = 0;
      for (size_t i = 0; i < std::min(m.steps.size(), ref.steps.size()); ++i)
        worst = std::max(worst, std::abs(m.steps[i].loss / ref.steps[i].loss - 1));
      std::printf(
          "[dist] dp %lld x ep %lld: step-20 loss %.8f vs one process %.8f; largest "
          "relative difference over the steps %.2e\n",
          (long long)dp, (long long)ep, m.steps.back().loss, ref.steps.back().loss, worst);
      // The sharded checkpoint, gathered in one process, is the run's final model.
      EXPECT_EQ(sharded_checkpoint_world(checkpoint_path(r.run_dir, 20)), P);
      const std::string out = r.run_dir + "/exported";
      EXPECT_EQ(export_checkpoint(r.run_dir, 20, out, DType::F32), 20);
      const std::string fin = r.run_dir + "/final-f32";
      export_checkpoint(r.run_dir, 20, fin, DType::F32);
      auto a = io::SafetensorsFile::open(out + "/model.safetensors");
      EXPECT_GT(a->tensors().size(), 0u);
    }
    ASSERT_TRUE(agree(ok));

    // Stopped after step 10 (as if killed: its step-10 checkpoint is the last), resumed to 20.
    RunOptions s = r;
    s.run_dir += "-resumed";
    s.stop_after = 10;
    EXPECT_FALSE(Trainer(cfg, s).run().finished);
    RunOptions s2;
    s2.run_dir = s.run_dir;
    s2.quiet = true;
    s2.comm = g_comm;
    EXPECT_TRUE(Trainer::resume(s2).run().finished);
    ok = true;
    if (g_comm->rank() == 0) {
      const MetricsLog a = read_metrics(r.run_dir + "/metrics.jsonl");
      const MetricsLog b = read_metrics(s.run_dir + "/metrics.jsonl");
      ASSERT_EQ(a.steps.size(), b.steps.size());
      for (size_t i = 0; i < a.steps.size(); ++i) {
        EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << "step " << i + 1;
        ok = ok && a.steps[i].loss == b.steps[i].loss;
      }
    }
    ASSERT_TRUE(agree(ok));
  }
  if (g_comm->rank() == 0) fs::remove_all(root);
}

// Refused before any work, with the same message on every rank (rank 0 prints it in dsv3 train).
TEST(DistTrain, BadLayoutsAreRefused) {
  const int P = g_comm->size();
  const std::string root = job_dir("dist-layouts-bad");
  TrainConfig cfg = dist_config(root);
  RunOptions r;
  r.run_dir = root + "/run";
  r.quiet = true;
  r.comm = g_comm;
  auto refused = [&](const TrainConfig& c, const char* what) {
    try {
      Trainer t(c, r);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(what), std::string::npos) << m;
      return;
    }
    ADD_FAILURE() << "not refused: " << what;
  };
  TrainConfig c = cfg;
  c.ep = P + 1;  // dp x ep != world
  refused(c, "ranks");
  c = cfg;
  c.ep = 3;  // 8 experts over 3 ranks
  refused(c, "n_routed_experts divisible by ep");
  c = cfg;
  c.batch = 4 * P + 1;  // the global batch does not split
  if (P > 1) refused(c, "does not split");
  EXPECT_FALSE(fs::exists(r.run_dir));
  g_comm->barrier();
  if (g_comm->rank() == 0) fs::remove_all(root);
}
