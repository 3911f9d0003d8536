// Mixed-precision training end to end (backend/cpu/linear_lowp.hpp, `precision` option): a short
// run of the tiny config in BF16 and in FP8 tracks the FP32 run's loss closely, really differs
// from it (the low-precision GEMMs ran), and resumes bit-exactly from a checkpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/rng.hpp"
#include "model/config.hpp"
#include "train/metrics.hpp"
#include "train/model_train.hpp"
#include "train/params.hpp"
#include "train/test_trainer_util.hpp"
#include "train/train_config.hpp"
#include "train/trainer.hpp"

using namespace dsv3;
using namespace dsv3::train;
using namespace dsv3::train::testing;

namespace {

std::vector<double> step_losses(const std::string& run_dir) {
  std::vector<double> r;
  for (const auto& s : read_metrics(run_dir + "/metrics.jsonl").steps) r.push_back(s.loss);
  return r;
}

std::vector<double> run(const TrainConfig& cfg, const std::string& dir, int64_t stop_after = -1) {
  RunOptions o = quiet_run(dir, stop_after);
  Trainer(cfg, o).run();
  return step_losses(dir);
}

double tail_mean(const std::vector<double>& v, size_t n) {
  double s = 0;
  for (size_t i = v.size() - n; i < v.size(); ++i) s += v[i];
  return s / double(n);
}

}  // namespace

TEST(Precision, Bf16AndFp8LossTrackFp32) {
  const std::string root = test_dir("precision");
  TrainConfig cfg = tiny_config(root);
  cfg.steps = 30;
  cfg.seed = 5;
  std::printf("seed %llu\n", (unsigned long long)cfg.seed);
  const auto f32 = run(cfg, root + "/fp32");
  cfg.precision = "bf16";
  const auto bf16 = run(cfg, root + "/bf16");
  cfg.precision = "fp8";
  const auto fp8 = run(cfg, root + "/fp8");
  ASSERT_EQ(f32.size(), 30u);
  ASSERT_EQ(bf16.size(), 30u);
  ASSERT_EQ(fp8.size(), 30u);
  // The low-precision GEMMs ran: the very first loss already differs, a little.
  EXPECT_NE(bf16[0], f32[0]);
  EXPECT_NE(fp8[0], f32[0]);
  EXPECT_NE(fp8[0], bf16[0]);
  EXPECT_LT(std::fabs(bf16[0] - f32[0]) / f32[0], 1e-2);
  EXPECT_LT(std::fabs(fp8[0] - f32[0]) / f32[0], 1e-2);
  // Training goes the same way: the loss falls, and the last steps' mean stays within 2% (BF16)
  // and 3% (FP8) of FP32's.
  const double m32 = tail_mean(f32, 5), mb = tail_mean(bf16, 5), m8 = tail_mean(fp8, 5);
  std::printf("last-5 mean loss: fp32 %.5f bf16 %.5f fp8 %.5f\n", m32, mb, m8);
  EXPECT_LT(m32, f32[0] - 0.5);
  EXPECT_LT(std::fabs(mb - m32) / m32, 0.02);
  EXPECT_LT(std::fabs(m8 - m32) / m32, 0.03);
}

TEST(Precision, ExactResumeInBf16AndFp8) {
  for (const char* p : {"bf16", "fp8"}) {
    const std::string root = test_dir(std::string("precision-resume-") + p);
    TrainConfig cfg = tiny_config(root);
    cfg.steps = 8;
    cfg.checkpoint_every = 4;
    cfg.precision = p;
    const auto full = run(cfg, root + "/a");
    run(cfg, root + "/b", 6);  // stops after step 6; the newest checkpoint is step 4
    RunOptions o = quiet_run(root + "/b");
    Trainer::resume(o).run();
    const auto resumed = step_losses(root + "/b");
    ASSERT_EQ(full.size(), 8u) << p;
    ASSERT_EQ(resumed.size(), full.size()) << p;
    for (size_t i = 0; i < full.size(); ++i)
      EXPECT_EQ(std::memcmp(&full[i], &resumed[i], sizeof(double)), 0)
          << p << " step " << i + 1 << ": " << full[i] << " vs " << resumed[i];
  }
}

// The default model with a 512-token vocabulary at a seeded initialization (seed printed), and
// n random tokens drawn from the same seed.
struct AtInit {
  model::ModelConfig c;
  ParamStore store;
  std::vector<int32_t> tokens;
  AtInit(uint64_t seed, int64_t n) : c(config()), store(c), tokens(size_t(n)) {
    std::printf("seed %llu\n", (unsigned long long)seed);
    store.init_random(seed);
    Rng rng(seed);
    for (auto& t : tokens) t = int32_t(rng.below(512));
  }
  static model::ModelConfig config() {
    nlohmann::json mj = default_model_json();
    mj["vocab_size"] = 512;
    return model::parse_config(mj.dump(), "default");
  }
};

// One forward of the default model at initialization: the objective in BF16 and FP8 is close to
// FP32's (the GEMM inputs' rounding only), and each precision is deterministic.
TEST(Precision, ForwardLossCloseToFp32AtInit) {
  const int64_t B = 2, T = 48;
  AtInit init(3, B * T);
  ParamStore& store = init.store;
  const std::vector<int32_t>& tokens = init.tokens;
  TrainModel m(init.c, store.layout(), store.params(), store.grads());
  TrainOptions o;
  o.mtp_lambda = 0.3;
  double loss[3];
  for (int p = 0; p < 3; ++p) {
    o.precision = cpu::Precision(p);
    StepStats st;
    loss[p] = m.forward_loss(tokens.data(), B, T, o, &st);
    EXPECT_EQ(loss[p], m.forward_loss(tokens.data(), B, T, o));
    std::printf("%s: loss %.6f main %.6f\n", cpu::precision_name(o.precision), loss[p],
                st.main_loss);
  }
  EXPECT_NE(loss[1], loss[0]);
  EXPECT_NE(loss[2], loss[0]);
  EXPECT_LT(std::fabs(loss[1] - loss[0]) / loss[0], 1e-3);
  // Empirical bound: FP8 measured 0.23% above FP32 (B=4, T=64) and 0.59% (B=2, T=48, here).
  EXPECT_LT(std::fabs(loss[2] - loss[0]) / loss[0], 1e-2);
}

// Low-precision storage (TrainOptions::lowp_storage, report §3.3.3): the activations saved for
// the Wgrad in BF16 / FP8 (E4M3 + 128×1 scales) instead of FP32 give the same gradients bit for
// bit (the Wgrad converted the FP32 copy the same way) — every parameter but o_proj under FP8,
// whose input is stored in E5M6 (a rounding of its own: close, not equal) — and less activation
// memory. The default model (dense and MoE layers, MTP), 400 tokens (the Wgrad's token split
// between threads), with and without recompute.
TEST(Precision, LowpStorageGivesTheSameWeightGradients) {
  const int64_t B = 4, T = 100;
  AtInit init(9, B * T);
  ParamStore& store = init.store;
  const std::vector<int32_t>& tokens = init.tokens;
  TrainModel m(init.c, store.layout(), store.params(), store.grads());
  for (const bool recompute : {false, true})
    for (const cpu::Precision p : {cpu::Precision::BF16, cpu::Precision::FP8}) {
      TrainOptions o;
      o.mtp_lambda = 0.3;
      o.precision = p;
      o.recompute = recompute;
      std::vector<float> grads[3];  // FP32 storage, low-precision storage, FP32 training
      size_t bytes[3];
      double loss[3];
      for (int run = 0; run < 3; ++run) {
        o.lowp_storage = run == 1;
        o.precision = run == 2 ? cpu::Precision::F32 : p;
        store.zero_grad();
        StepStats st;
        loss[run] = m.forward_backward(tokens.data(), B, T, o, &st);
        grads[run].assign(store.grads(), store.grads() + store.size());
        bytes[run] = st.activation_bytes;
      }
      const std::string what =
          std::string(cpu::precision_name(p)) + (recompute ? " recompute" : "");
      std::printf("%s: activation bytes %zu (FP32 storage) -> %zu\n", what.c_str(), bytes[0],
                  bytes[1]);
      EXPECT_EQ(loss[0], loss[1]) << what;
      EXPECT_LT(bytes[1], bytes[0]) << what;
      int64_t o_proj = 0;
      for (const auto& e : store.entries()) {
        const float* a = grads[0].data() + e.offset;
        const float* b = grads[1].data() + e.offset;
        if (p == cpu::Precision::FP8 && e.name.find("o_proj") != std::string::npos) {
          ++o_proj;
          // Relative RMS distance of two gradients of the tensor.
          auto dist = [&](const float* u, const float* v) {
            double d2 = 0, n2 = 0;
            for (int64_t i = 0; i < e.numel; ++i) {
              d2 += double(u[i] - v[i]) * double(u[i] - v[i]);
              n2 += double(v[i]) * double(v[i]);
            }
            return std::sqrt(d2 / n2);
          };
          const float* f32 = grads[2].data() + e.offset;
          const double moved = dist(b, a), err_fp32 = dist(a, f32), err_e5m6 = dist(b, f32);
          std::printf("%s %s: E5M6 moved it by %.4f; FP8 error vs FP32 training %.4f -> %.4f\n",
                      what.c_str(), e.name.c_str(), moved, err_fp32, err_e5m6);
          // E5M6 rounds x by ≤ 2^-7 before the Wgrad's own E4M3 rounding (step 2^-3 relative):
          // an element crosses an E4M3 rounding boundary with probability ~2^-7 / 2^-4, so the
          // gradient moves by a few percent at most, and its error against FP32 training stays
          // that of FP8 training (measured, seed 9: moved 1.6–1.9%; the error of FP8 training
          // against FP32 training on this gradient, 38–51% at initialization, unchanged).
          EXPECT_GT(moved, 0.0) << what << " " << e.name << ": E5M6 storage changed nothing";
          EXPECT_LT(moved, 5e-2) << what << " " << e.name;
          EXPECT_LT(err_e5m6, 1.25 * err_fp32) << what << " " << e.name;
          continue;
        }
        ASSERT_EQ(std::memcmp(a, b, size_t(e.numel) * 4), 0) << what << " " << e.name;
      }
      if (p == cpu::Precision::FP8) {
        EXPECT_GT(o_proj, 0);
      }
    }
}
