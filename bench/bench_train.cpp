// Training benchmark: tokens/s and MFU of the full training step (forward, backward with MTP and
// the balance loss, gradient clipping, AdamW with BF16 moments, bias update) on the built-in
// default model of `dsv3 train` (or a config.json), on 1 and 2 threads; the share of the step
// spent in GEMMs, attention, routed experts, MoE permutation, router, loss and optimizer; and the
// saved activation memory with and without recomputation. Beside it, measured in the same run:
// the FP32 FMA peak (core/fma_peak.hpp, register-only FMA loop: the MFU denominator, as in
// `dsv3 train`) and, for context only, the FP32/BF16 GEMM peak (oneDNN). With --precision, each
// listed training precision (backend/cpu/linear_lowp.hpp) runs from the same initial parameters,
// with its speedup over FP32 and its MFU over the BF16 dot peak (core/fma_peak.hpp) as well; the
// precisions' timed steps alternate step by step (fp32, bf16, fp8, fp32, ...), and the mean and
// the median step are both reported, so that a shared machine's changing load does not decide
// the ratios. Each run reports its saved activation memory per step (activation_bytes: bf16 and
// fp8 keep the Wgrad inputs in low precision, linear_lowp.hpp SavedAct) and its ratio to the
// fp32 and bf16 runs' (activation_vs_fp32, activation_vs_bf16) when those are listed.
// The peaks are given twice: one core's times the thread count (the MFU denominator of
// `dsv3 train`) and measured with all threads running at once (`*_concurrent`, the limit that a
// multi-thread run meets where threads share a core's vector units).
// --cpu-time times steps by process CPU time (1-thread runs on a shared machine). Prints JSON.
//
//   bench_train [--config FILE] [--threads 1,2] [--batch 16] [--seq-len 128] [--steps 20]
//               [--vocab 2048] [--seed 0] [--precision fp32,bf16,fp8] [--cpu-time]
#include <omp.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include "bench_util.hpp"

#include "core/error.hpp"
#include "core/profile.hpp"
#include "core/rng.hpp"
#include "model/config.hpp"
#include "train/balance.hpp"
#include "train/model_train.hpp"
#include "train/optimizer.hpp"
#include "train/params.hpp"
#include "train/train_config.hpp"

using namespace dsv3;
using namespace dsv3::train;

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// --cpu-time: time the steps by the process's CPU time instead of the wall clock, for 1-thread
// runs on a machine other jobs share (time slices taken by them then do not count).
bool g_cpu_time = false;

double now_s() {
  if (g_cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Timing {
  double step_s = 0, optimizer_s = 0;
  StepProfile profile;
  size_t activation_bytes = 0;
};

TrainOptions options(const ParamStore& store, bool recompute, bool profile, cpu::Precision p) {
  TrainOptions o;
  o.precision = p;
  o.mtp_lambda = store.config().num_nextn_predict_layers > 0 ? 0.3 : 0.0;
  o.balance_alpha = 1e-4;
  o.recompute = recompute;
  o.profile = profile;
  return o;
}

// One training step on batch i (of 4, in turn): forward, backward, clipping, AdamW, bias update.
// Returns its time; *opt_s the part after the backward.
double one_step(ParamStore& store, TrainModel& m, AdamW& opt, const std::vector<int32_t>& tokens,
                int64_t B, int64_t W, int i, const TrainOptions& o, StepStats& st, double* opt_s) {
  const double t0 = now_s();
  store.zero_grad();
  m.forward_backward(tokens.data() + size_t((i + 2) % 4) * size_t(B * W), B, W, o, &st);
  const double t1 = now_s();
  clip_grad_norm(store.grads(), size_t(store.size()), 1.0f);
  opt.step(store.params(), store.grads(), 1e-4f);
  for (size_t r = 0; r < st.moe_layer.size(); ++r) {
    const auto& load = st.expert_load[r];
    update_bias(store.param(fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias",
                                        st.moe_layer[r])),
                load.data(), int64_t(load.size()), 0.001f);
  }
  const double t2 = now_s();
  *opt_s = t2 - t1;
  return t2 - t0;
}

// `steps` timed training steps after two warm-up steps; per-phase times are totals over the
// timed steps.
Timing run_steps(ParamStore& store, TrainModel& m, AdamW& opt, const std::vector<int32_t>& tokens,
                 int64_t B, int64_t W, int steps, bool recompute, bool profile,
                 cpu::Precision precision = cpu::Precision::F32) {
  const TrainOptions o = options(store, recompute, profile, precision);
  Timing t;
  for (int i = -2; i < steps; ++i) {
    if (i == 0) t = Timing{};
    StepStats st;
    double opt_s = 0;
    const double dt = one_step(store, m, opt, tokens, B, W, i, o, st, &opt_s);
    if (i >= 0) {
      t.optimizer_s += opt_s;
      t.step_s += dt;
      t.activation_bytes = st.activation_bytes;
      StepProfile& p = t.profile;
      p.gemm_s += st.profile.gemm_s;
      p.attention_s += st.profile.attention_s;
      p.moe_permute_s += st.profile.moe_permute_s;
      p.router_s += st.profile.router_s;
      p.loss_s += st.profile.loss_s;
      p.experts_s += st.profile.experts_s;
      p.gemm_calls += st.profile.gemm_calls;
    }
  }
  return t;
}

const char* kUsage =
    "usage: bench_train [--config FILE] [--threads 1,2] [--batch B] [--seq-len T] [--steps N]\n"
    "                   [--vocab V] [--seed S] [--precision fp32,bf16,fp8] [--cpu-time]\n"
    "Times the full training step of the default `dsv3 train` model (or a config.json) and\n"
    "prints JSON: tokens/s, MFU over the FP32 FMA peak (and over the BF16 dot peak), time\n"
    "shares, activation memory, per training precision (--precision, default fp32 only).\n";

}  // namespace

int main(int argc, char** argv) {
  std::string config_path, threads_s = "1,2", precisions_s = "fp32";
  int64_t batch = 16, seq_len = 128, vocab = 2048;
  int steps = 20;
  uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_train: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    if (a == "--config")
      config_path = next();
    else if (a == "--threads")
      threads_s = next();
    else if (a == "--batch")
      batch = std::stoll(next());
    else if (a == "--seq-len")
      seq_len = std::stoll(next());
    else if (a == "--steps")
      steps = std::stoi(next());
    else if (a == "--vocab")
      vocab = std::stoll(next());
    else if (a == "--seed")
      seed = std::stoull(next());
    else if (a == "--precision")
      precisions_s = next();
    else if (a == "--cpu-time")
      g_cpu_time = true;
    else {
      std::fprintf(stderr, "bench_train: unknown flag %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  try {
    nlohmann::json mj = default_model_json();
    if (!config_path.empty()) {
      std::ifstream f(config_path);
      DSV3_CHECK(f.good(), "cannot read {}", config_path);
      mj = nlohmann::json::parse(f);
    } else {
      mj["vocab_size"] = vocab;
    }
    const model::ModelConfig c =
        model::parse_config(mj.dump(), config_path.empty() ? "default" : config_path);
    DSV3_CHECK(steps >= 1, "--steps must be at least 1, got {}", steps);
    const bool mtp = c.num_nextn_predict_layers > 0;
    const int64_t W = seq_len + 1;
    std::fprintf(stderr, "bench_train: seed %llu, %s, B=%lld T=%lld\n",
                 static_cast<unsigned long long>(seed),
                 config_path.empty() ? "default dsv3 train model" : config_path.c_str(),
                 static_cast<long long>(batch), static_cast<long long>(seq_len));

    ParamStore store(c);
    store.init_random(seed);
    Rng rng(seed);
    std::vector<int32_t> tokens(static_cast<size_t>(4 * batch * W));
    for (auto& t : tokens) t = int32_t(rng.next_u64() % uint64_t(c.vocab_size));
    const double flops_per_token = train_flops_per_token(c, seq_len, mtp);

    bench::JsonWriter j;
    j.begin_object();
    j.field("bench", "train");
    j.field("config", config_path.empty() ? "dsv3 train default" : config_path);
    j.field("parameters", store.size());
    j.field("batch", batch);
    j.field("seq_len", seq_len);
    j.field("steps_timed", steps);
    j.field("clock", g_cpu_time ? "process cpu time" : "wall");
    j.field("model_mflop_per_token", flops_per_token / 1e6, 3);
    j.begin_array("runs");
    for (int threads : bench::parse_int_list(threads_s)) {
      bench::ScopedThreads st(threads);
      const FmaPeak fma = measure_fp32_fma_peak(threads);
      const double fma_peak = fma.flops / 1e9;
      const double gemm_f32 = bench::measure_gemm_peak_gflops(false, threads);
      const double gemm_bf16 = bench::measure_gemm_peak_gflops(true, threads);
      const FmaPeak bf16 = measure_bf16_dot_peak(threads);
      const double bf16_peak = bf16.flops / 1e9;
      // What the threads do together (fma_peak.hpp: SMT siblings share one core's units).
      const double fma_together = measure_fp32_fma_peak_concurrent(threads).flops / 1e9;
      const double bf16_together = measure_bf16_dot_peak_concurrent(threads).flops / 1e9;
      // One model, optimizer and parameter copy per precision (same initial parameters); the
      // timed steps alternate between them, step by step, so that a change in the machine's load
      // falls on every precision alike.
      struct Run {
        cpu::Precision prec;
        std::unique_ptr<ParamStore> store;
        std::unique_ptr<AdamW> opt;
        std::unique_ptr<TrainModel> m;
        std::vector<double> step_s;
        size_t activation_bytes = 0;
      };
      std::vector<Run> runs;
      for (const std::string& pname : split_list(precisions_s)) {
        Run r;
        r.prec = cpu::parse_precision(pname);
        r.store = std::make_unique<ParamStore>(c);
        r.store->init_random(seed);
        r.opt = std::make_unique<AdamW>(r.store->size());
        r.m =
            std::make_unique<TrainModel>(c, r.store->layout(), r.store->params(), r.store->grads());
        runs.push_back(std::move(r));
      }
      for (int i = -2; i < steps; ++i)
        for (Run& r : runs) {
          StepStats st;
          double opt_s = 0;
          const double dt = one_step(*r.store, *r.m, *r.opt, tokens, batch, W, i,
                                     options(*r.store, false, false, r.prec), st, &opt_s);
          if (i >= 0) r.step_s.push_back(dt);
          r.activation_bytes = st.activation_bytes;
        }
      double tok_s_fp32 = 0, tok_s_fp32_median = 0;
      size_t act_fp32 = 0, act_bf16 = 0;  // saved activations of the fp32 / bf16 runs
      for (const Run& r : runs) {
        if (r.prec == cpu::Precision::F32) act_fp32 = r.activation_bytes;
        if (r.prec == cpu::Precision::BF16) act_bf16 = r.activation_bytes;
      }
      for (Run& r : runs) {
        const cpu::Precision prec = r.prec;
        ParamStore& store = *r.store;
        AdamW& opt = *r.opt;
        TrainModel& m = *r.m;
        double total = 0;
        for (double t : r.step_s) total += t;
        std::vector<double> sorted = r.step_s;
        std::sort(sorted.begin(), sorted.end());
        const double median = sorted[sorted.size() / 2];
        // The profiled steps (phase timers on) run after the timed ones, one precision at a time.
        const Timing prof = run_steps(store, m, opt, tokens, batch, W, steps, false, true, prec);
        const double tok_s = double(batch * seq_len * steps) / total;
        const double tok_s_median = double(batch * seq_len) / median;
        if (prec == cpu::Precision::F32) {
          tok_s_fp32 = tok_s;
          tok_s_fp32_median = tok_s_median;
        }
        const double achieved = flops_per_token * tok_s / 1e9;
        j.begin_object();
        j.field("threads", threads);
        j.field("precision", cpu::precision_name(prec));
        j.field("fp32_fma_peak_gflops", fma_peak, 1);
        j.field("bf16_dot_peak_gflops", bf16_peak, 1);
        j.field("fp32_fma_peak_concurrent_gflops", fma_together, 1);
        j.field("bf16_dot_peak_concurrent_gflops", bf16_together, 1);
        j.field("fp32_gemm_peak_gflops", gemm_f32, 1);
        j.field("bf16_gemm_peak_gflops", gemm_bf16, 1);
        j.field("tokens_per_s", tok_s, 1);
        j.field("tokens_per_s_median_step", tok_s_median, 1);
        if (tok_s_fp32 > 0) {
          j.field("speedup_vs_fp32", tok_s / tok_s_fp32, 3);
          j.field("speedup_vs_fp32_median_step", tok_s_median / tok_s_fp32_median, 3);
        }
        j.field("step_ms", 1e3 * total / steps, 2);
        j.field("step_ms_median", 1e3 * median, 2);
        j.field("step_ms_min", 1e3 * sorted.front(), 2);
        j.field("model_gflops", achieved, 1);
        j.field("mfu", achieved / fma_peak, 3);
        j.field("mfu_peak", fma.name);
        if (bf16_peak > 0) j.field("mfu_vs_bf16_peak", achieved / bf16_peak, 3);
        if (bf16_together > 0) j.field("mfu_vs_bf16_peak_concurrent", achieved / bf16_together, 3);
        const double T = prof.step_s;
        const StepProfile& p = prof.profile;
        const double other = T - p.gemm_s - p.attention_s - p.experts_s - p.moe_permute_s -
                             p.router_s - p.loss_s - prof.optimizer_s;
        j.begin_object("time_share");
        j.field("gemm", p.gemm_s / T, 3);
        j.field("attention", p.attention_s / T, 3);
        j.field("routed_experts", p.experts_s / T, 3);
        j.field("moe_permutation", p.moe_permute_s / T, 3);
        j.field("router", p.router_s / T, 3);
        j.field("loss_softmax", p.loss_s / T, 3);
        j.field("optimizer", prof.optimizer_s / T, 3);
        j.field("other", other / T, 3);
        j.end_object();
        j.field("activation_mib", double(r.activation_bytes) / 1048576.0, 2);
        // Saved activations of one step (StepStats::activation_bytes: the low-precision storage
        // of bf16/fp8), against the fp32 and bf16 runs' when listed.
        j.field("activation_bytes", int64_t(r.activation_bytes));
        if (act_fp32 > 0)
          j.field("activation_vs_fp32", double(r.activation_bytes) / double(act_fp32), 3);
        if (act_bf16 > 0)
          j.field("activation_vs_bf16", double(r.activation_bytes) / double(act_bf16), 3);
        if (prec == cpu::Precision::F32) {
          // The recompute run, FP32 only (a fresh model, so its saved activations are its own).
          TrainModel mr(c, store.layout(), store.params(), store.grads());
          const Timing rc = run_steps(store, mr, opt, tokens, batch, W, steps, true, false);
          j.field("activation_mib_recompute", double(rc.activation_bytes) / 1048576.0, 2);
          j.field("activation_saved_fraction",
                  1.0 - double(rc.activation_bytes) / double(r.activation_bytes), 3);
          j.field("tokens_per_s_recompute", double(batch * seq_len * steps) / rc.step_s, 1);
        }
        j.end_object();
      }
    }
    j.end_array();
    j.end_object();
    j.print();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
