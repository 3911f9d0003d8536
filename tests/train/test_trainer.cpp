// dsv3 train end to end on tiny configs: exact resume after an interruption and a torn newest
// checkpoint, the exported HF model against the training model, and issue 4's loop test (loss
// and MaxVio fall over 200 steps).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/rng.hpp"
#include "io/file.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"
#include "train/eval.hpp"
#include "train/export.hpp"
#include "train/metrics.hpp"
#include "train/model_train.hpp"
#include "train/test_trainer_util.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;
using namespace dsv3;
using namespace dsv3::train;
using namespace dsv3::train::testing;

namespace {

std::vector<double> step_losses(const std::string& run_dir) {
  std::vector<double> r;
  for (const auto& s : read_metrics(run_dir + "/metrics.jsonl").steps) r.push_back(s.loss);
  return r;
}

// Cross-entropy of targets under logits [n, V], averaged.
double mean_ce(const float* logits, const int32_t* targets, int64_t n, int64_t V) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* l = logits + i * V;
    double mx = l[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
    total += std::log(z) + mx - double(l[targets[i]]);
  }
  return total / double(n);
}

}  // namespace

// (a) + (c): a run stopped after step 10 whose newest checkpoint (step 8) is then torn resumes
// from step 4 with a warning and repeats the uninterrupted run's losses bit for bit.
TEST(Trainer, ExactResumeAfterTornCheckpoint) {
  const std::string root = test_dir("resume");
  TrainConfig cfg = tiny_config(root);
  cfg.steps = 12;
  cfg.checkpoint_every = 4;
  cfg.keep_last = 2;
  cfg.eval_every = 6;

  RunOptions a = quiet_run(root + "/a");
  TrainResult ra = Trainer(cfg, a).run();
  ASSERT_TRUE(ra.finished);
  const auto la = step_losses(a.run_dir);
  ASSERT_EQ(la.size(), 12u);

  RunOptions b = a;
  b.run_dir = root + "/b";
  b.stop_after = 10;
  TrainResult rb = Trainer(cfg, b).run();
  EXPECT_FALSE(rb.finished);
  EXPECT_EQ(rb.step, 10);
  EXPECT_EQ(list_checkpoints(b.run_dir), (std::vector<int64_t>{4, 8}));
  // A torn write of the newest checkpoint: its tensors file loses its tail.
  const std::string torn = checkpoint_path(b.run_dir, 8) + "/tensors.safetensors";
  fs::resize_file(torn, fs::file_size(torn) / 2);

  RunOptions rb2 = quiet_run(b.run_dir);
  Trainer t = Trainer::resume(rb2);
  bool warned = false;
  for (const auto& w : t.warnings()) warned = warned || w.find("step-8") != std::string::npos;
  EXPECT_TRUE(warned) << "no warning names the corrupt step-8 checkpoint";
  TrainResult rr = t.run();
  ASSERT_TRUE(rr.finished);
  const auto lb = step_losses(b.run_dir);
  ASSERT_EQ(lb.size(), la.size());
  for (size_t i = 0; i < la.size(); ++i)
    EXPECT_EQ(std::memcmp(&la[i], &lb[i], sizeof(double)), 0)
        << "step " << i + 1 << ": " << la[i] << " vs " << lb[i];
  EXPECT_EQ(io::read_file(a.run_dir + "/final/model.safetensors"),
            io::read_file(b.run_dir + "/final/model.safetensors"));
  EXPECT_EQ(ra.val_loss, rr.val_loss);
}

// (c) alone: every checkpoint corrupt -> resume refuses with a clear error.
TEST(Trainer, ResumeWithoutValidCheckpointFails) {
  const std::string root = test_dir("nockpt");
  TrainConfig cfg = tiny_config(root);
  cfg.steps = 3;
  cfg.checkpoint_every = 0;
  RunOptions r = quiet_run(root + "/run");
  Trainer(cfg, r).run();
  const std::string meta = checkpoint_path(r.run_dir, 3) + "/meta.json";
  std::string m = io::read_file(meta);
  m[m.size() / 2] ^= 1;
  io::atomic_write(meta, m);
  try {
    Trainer::resume(r);
    FAIL() << "resume accepted a corrupt checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no valid checkpoint"), std::string::npos) << e.what();
  }
}

// (b): RUN_DIR/final (F32) loaded by the inference model gives the training model's main and MTP
// losses on the same tokens.
TEST(Trainer, ExportedModelMatchesTrainingModel) {
  const std::string root = test_dir("export");
  TrainConfig cfg = tiny_config(root);
  cfg.steps = 6;
  cfg.export_dtype = "f32";
  RunOptions r = quiet_run(root + "/run");
  ASSERT_TRUE(Trainer(cfg, r).run().finished);
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(r.run_dir + "/final/" + f)) << f;

  ParamStore store = params_from_checkpoint(load_checkpoint(checkpoint_path(r.run_dir, 6)));
  const auto& c = store.config();
  const int64_t W = 24, V = c.vocab_size;
  std::vector<int32_t> tokens(W);
  Rng rng(7);
  for (auto& t : tokens) t = int32_t(rng.below(uint64_t(V)));
  TrainModel tm(c, store.layout(), store.params(), store.grads());
  TrainOptions o;
  o.mtp_lambda = 0.3;
  StepStats st;
  tm.forward_loss(tokens.data(), 1, W, o, &st);

  model::LoadOptions lo;
  lo.compute = cpu::Compute::F32;
  auto m = model::Model::load(r.run_dir + "/final", lo);
  ASSERT_TRUE(m->has_mtp());
  model::KVCache cache(c, 1, W, true);
  std::vector<float> logits(size_t(W * V)), hidden(size_t(W * c.hidden_size));
  model::ForwardOptions fo;
  fo.final_hidden = hidden.data();
  m->forward(tokens.data(), 1, W, 0, cache, logits.data(), fo);
  EXPECT_NEAR(mean_ce(logits.data(), tokens.data() + 1, W - 1, V), st.main_loss, 1e-4);
  std::vector<float> mlogits(size_t((W - 1) * V));
  m->mtp_forward(hidden.data(), tokens.data() + 1, 1, W - 1, 0, cache, mlogits.data());
  ASSERT_EQ(st.mtp_loss.size(), 1u);
  EXPECT_NEAR(mean_ce(mlogits.data(), tokens.data() + 2, W - 2, V), st.mtp_loss[0], 1e-4);

  // `dsv3 export` of the same checkpoint in F32 holds the same weights.
  export_checkpoint(r.run_dir, -1, root + "/exported", DType::F32);
  EXPECT_EQ(io::read_file(root + "/exported/model.safetensors"),
            io::read_file(r.run_dir + "/final/model.safetensors"));
  // And `dsv3 eval`'s loss is finite and below the uniform guess.
  auto ev = evaluate_model_dir(r.run_dir + "/final", {root + "/corpus"}, 32, 4, 8);
  EXPECT_TRUE(std::isfinite(ev.loss));
  EXPECT_LT(ev.loss, std::log(double(V)));
}

// Issue 4's loop test: 200 steps on a small corpus bring the loss well below its start, and the
// bias update brings MaxVio down over time.
TEST(Trainer, LossAndMaxVioFallOver200Steps) {
  const std::string root = test_dir("loop");
  TrainConfig cfg = tiny_config(root);
  cfg.steps = 200;
  cfg.checkpoint_every = 0;
  cfg.eval_every = 100;
  cfg.gamma = 0.01;  // a short run: a faster bias moves loads within the run
  RunOptions r = quiet_run(root + "/run");
  TrainResult res = Trainer(cfg, r).run();
  ASSERT_TRUE(res.finished);
  const MetricsLog log = read_metrics(r.run_dir + "/metrics.jsonl");
  ASSERT_EQ(log.steps.size(), 200u);
  auto avg = [&](size_t b, size_t e, auto get) {
    double t = 0;
    for (size_t i = b; i < e; ++i) t += get(log.steps[i]);
    return t / double(e - b);
  };
  auto loss = [](const StepRecord& s) { return s.loss; };
  auto vio = [](const StepRecord& s) {
    double t = 0;
    for (double v : s.max_vio) t += v;
    return t / double(s.max_vio.size());
  };
  const double l0 = avg(0, 10, loss), l1 = avg(190, 200, loss);
  const double v0 = avg(0, 30, vio), v1 = avg(150, 200, vio);
  std::printf("loss %.3f -> %.3f, MaxVio %.3f -> %.3f, val %.3f\n", l0, l1, v0, v1, res.val_loss);
  EXPECT_LT(l1, 0.6 * l0);
  EXPECT_LT(v1, v0);
  ASSERT_GE(log.evals.size(), 2u);
  EXPECT_LT(log.evals.back().val_loss, log.evals.front().val_loss - 1.0);
  EXPECT_TRUE(fs::exists(r.run_dir + "/report.html"));

  // MFU is over the register-only FP32 FMA peak, and the record and the report say so.
  const auto& x = log.run.extra;
  ASSERT_TRUE(x.contains("mfu_peak") && x["mfu_peak"].is_string());
  EXPECT_EQ(x["mfu_peak"].get<std::string>().rfind("fp32_fma", 0), 0u) << x.dump();
  ASSERT_TRUE(x.contains("mfu_peak_flops") && x["mfu_peak_flops"].is_number());
  EXPECT_GT(x["mfu_peak_flops"].get<double>(), 0);
  EXPECT_FALSE(x.contains("fp32_peak_flops")) << "the GEMM-timed peak is gone";
  for (const auto& st : log.steps) EXPECT_TRUE(std::isfinite(st.mfu) && st.mfu > 0) << st.step;
  EXPECT_NE(io::read_file(r.run_dir + "/report.html").find("hardware FP32 FMA peak"),
            std::string::npos);
}
