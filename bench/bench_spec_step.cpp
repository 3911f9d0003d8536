// Where a speculative decode step's time goes, beside a plain one: the parts of one request's
// step on a model with an MTP module (the `dsv3 train` default model), each timed alone over
// many repetitions at a fixed context length.
//   main_1 / main_2 / main_3   the main model's forward of 1, 2, 3 tokens (logits of each)
//   mtp_1 / mtp_2              the MTP module over 1, 2 positions (logits of the last)
//   argmax, logprob            one 2048-way argmax, one full log-softmax of a logits row
// and, from these parts, the most a one-draft speculative step can gain over plain decoding at
// a given acceptance rate, engine time left out (speedup_bound*: see docs/benchmarks.md).
// Prints JSON.
//
// usage: bench_spec_step --model DIR [--context 64] [--reps 2000] [--compute bf16|f32]
//                        [--acceptance 0.636]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "model/model.hpp"
#include "serve/distribution.hpp"

using namespace dsv3;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

template <typename Fn>
double time_us(int64_t reps, Fn&& fn) {
  for (int64_t i = 0; i < reps / 10 + 1; ++i) fn();  // warm up
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < reps; ++i) fn();
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / double(reps);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, compute = "bf16";
  int64_t context = 64, reps = 2000;
  double acceptance = 0.636;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::printf(
          "usage: bench_spec_step --model DIR [--context 64] [--reps 2000] [--compute bf16|f32]\n"
          "                       [--acceptance A]   (drafts accepted, 0..1, for the bounds;\n"
          "                                           default 0.636, the default model's)\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_spec_step: %s needs a value\n", f.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (f == "--model")
      dir = v;
    else if (f == "--context" || f == "--reps") {
      char* end = nullptr;
      const long long x = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0') {
        std::fprintf(stderr, "bench_spec_step: %s needs an integer, got '%s'\n", f.c_str(),
                     v.c_str());
        return 2;
      }
      (f == "--context" ? context : reps) = x;
    } else if (f == "--compute")
      compute = v;
    else {
      std::fprintf(stderr, "bench_spec_step: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  if (dir.empty() || !fs::exists(fs::path(dir) / "config.json") || context < 1 || reps < 1 ||
      (compute != "bf16" && compute != "f32")) {
    std::fprintf(stderr,
                 "bench_spec_step: needs --model DIR (a checkpoint with MTP), see --help\n");
    return 2;
  }
  try {
    model::LoadOptions lo;
    lo.compute = compute == "bf16" ? cpu::Compute::BF16 : cpu::Compute::F32;
    auto m = model::Model::load(dir, lo);
    DSV3_CHECK(m->has_mtp(), "{} has no MTP module", dir);
    const auto& c = m->config();
    const int64_t V = c.vocab_size, D = c.hidden_size;
    const int64_t max_seq = context + 8;
    model::KVCache cache(c, 1, max_seq, true);
    const int32_t block = 0;
    std::vector<int32_t> toks(static_cast<size_t>(max_seq));
    for (int64_t i = 0; i < max_seq; ++i) toks[size_t(i)] = int32_t(2 + (i * 37) % (V - 2));
    std::vector<float> logits(static_cast<size_t>(4 * V)), hidden(static_cast<size_t>(max_seq * D));
    // The prompt: main model and MTP module over the context.
    {
      model::ForwardOptions fo;
      fo.final_hidden = hidden.data();
      const model::SeqSpan s{0, context, &block, 1};
      const int64_t row = context - 1;
      m->forward_batch(toks.data(), {&s, 1}, cache, logits.data(), &row, 1, fo);
      m->mtp_forward_batch(hidden.data(), toks.data() + 1, {&s, 1}, cache, logits.data(), &row, 1);
    }
    const int64_t rows[3] = {0, 1, 2};
    // Each part: its time per call, and (timed inside the forward) its attention, FFN and
    // head parts (the MTP module's head and eh_proj are in total only).
    struct Part {
      double us = 0;
      model::ForwardTimes t;
    };
    auto finish = [&](Part& p, int64_t calls) {
      p.t.attention *= 1e6 / double(calls);
      p.t.ffn *= 1e6 / double(calls);
      p.t.head *= 1e6 / double(calls);
      p.t.total *= 1e6 / double(calls);
      return p;
    };
    auto main_n = [&](int64_t n) {
      Part p;
      model::ForwardOptions fo;
      fo.final_hidden = hidden.data();
      fo.times = &p.t;
      const model::SeqSpan s{context, n, &block, 1};
      p.us = time_us(reps, [&] {
        m->forward_batch(toks.data() + context, {&s, 1}, cache, logits.data(), rows, n, fo);
      });
      return finish(p, reps + reps / 10 + 1);
    };
    auto mtp_n = [&](int64_t n) {
      Part p;
      model::ForwardOptions fo;
      fo.times = &p.t;
      const model::SeqSpan s{context, n, &block, 1};
      const int64_t row = n - 1;
      p.us = time_us(reps, [&] {
        m->mtp_forward_batch(hidden.data(), toks.data() + context + 1, {&s, 1}, cache,
                             logits.data(), &row, 1, fo);
      });
      return finish(p, reps + reps / 10 + 1);
    };
    if (const char* only = std::getenv("BENCH_SPEC_ONLY")) {  // profiling one part
      const int64_t n = only[1] - '0';
      std::printf("%.2f\n", only[0] == 'm' ? main_n(n).us : mtp_n(n).us);
      return 0;
    }
    const Part parts[5] = {main_n(1), main_n(2), main_n(3), mtp_n(1), mtp_n(2)};
    const char* names[5] = {"main_1", "main_2", "main_3", "mtp_1", "mtp_2"};
    volatile int64_t sink = 0;
    const double amax = time_us(reps * 10, [&] {
      const float* L = logits.data();
      sink = std::max_element(L, L + V) - L;
    });
    const double lp = time_us(
        reps * 10, [&] { sink = int64_t(serve::token_logprob(logits.data(), V, 3, 0, nullptr)); });
    bench::JsonWriter j;
    j.begin_object();
    j.field("bench", "spec_step");
    j.field("model", dir);
    j.field("compute", compute);
    j.field("threads", int64_t(num_threads()));
    j.field("context", context);
    j.field("reps", reps);
    j.begin_array("parts");
    for (int i = 0; i < 5; ++i) {
      j.begin_object();
      j.field("part", names[i]);
      j.field("us", parts[i].us);
      j.field("attention_us", parts[i].t.attention);
      j.field("ffn_us", parts[i].t.ffn);
      j.field("head_us", parts[i].t.head);
      j.end_object();
    }
    j.end_array();
    j.field("argmax_us", amax);
    j.field("logprob_us", lp);
    // A plain step is main_1 for one token. A speculative step verifies the draft (main_2), then
    // runs the MTP module over the accepted positions (mtp_2 when the draft is accepted, else
    // mtp_1), for 1 + acceptance tokens. The second bound lets verification cost what one
    // token does; the third also accepts every draft: what no engine could beat on this model.
    const double a = acceptance, main1 = parts[0].us, main2 = parts[1].us;
    const double mtp = a * parts[4].us + (1 - a) * parts[3].us;
    j.field("acceptance", a);
    j.field("speedup_bound", (1 + a) * main1 / (main2 + mtp));
    j.field("speedup_bound_free_verify", (1 + a) * main1 / (main1 + mtp));
    j.field("speedup_bound_free_verify_all_accepted", 2 * main1 / (main1 + parts[4].us));
    j.end_object();
    j.print();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_spec_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
