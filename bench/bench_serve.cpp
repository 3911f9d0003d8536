// Serving benchmark on the engine directly (no HTTP), like vLLM's benchmark_serving: for each
// concurrency C, C requests of --prompt random tokens and --output new tokens (greedy, no stop)
// submitted at once to a fresh serve::Engine; output tokens/s, time to first token (TTFT) and time
// per output token (TPOT) p50/p99, and the aggregate decode throughput (the window in which every
// request is decoding: from the last first token to the first last token). Beside it, the bound
// set by the bytes a decode step actually reads (the shared weights once, each distinct routed
// expert the step's tokens reach once: counted by the engine from the routing) at the sustained
// huge-page full-entropy read bandwidth swept right before and right after the level (the faster
// of the two: the VM's bandwidth drifts, and a limit below what the level achieved is no limit).
// With --speculative mtp (or both) the same with MTP speculation, and its acceptance. Prints JSON;
// `--help` for flags.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/rng.hpp"
#include "model/model.hpp"
#include "serve/engine.hpp"

using namespace dsv3;
namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: bench_serve [--model DIR] [--concurrency 1,4,16,32] [--prompt 64] [--output 64]\n"
    "                   [--speculative none|mtp|both] [--kv-cache-mb 2048] [--compute bf16|f32]\n"
    "\n"
    "Serving benchmark of the engine (src/serve/engine.hpp) without HTTP. Default model: the\n"
    "bench_model checkpoint in " DSV3_BINARY_DIR
    "/bench-1b (run bench_model once to make it).\n"
    "Threads: OMP_NUM_THREADS (default: all cores). Run it quiet (/work/bin/cpu quiet).\n"
    "  --concurrency L   requests in flight per level (comma list)\n"
    "  --prompt N        prompt tokens per request (random ids, distinct per request)\n"
    "  --output N        new tokens per request\n"
    "  --speculative S   none (default), mtp, or both (each level twice)\n"
    "  --kv-cache-mb N   the engine's KV cache budget\n"
    "  --compute C       bf16 (default) or f32 compute\n"
    "  --help            this text\n";

struct Args {
  std::string model_dir, concurrency = "1,4,16,32", speculative = "none", compute = "bf16";
  int64_t prompt = 64, output = 64, kv_mb = 2048;
};

int parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_serve: %s needs a value (or unknown flag)\n%s", f.c_str(),
                   kUsage);
      return 2;
    }
    const std::string v = argv[++i];
    try {
      if (f == "--model")
        a.model_dir = v;
      else if (f == "--concurrency")
        a.concurrency = v;
      else if (f == "--prompt")
        a.prompt = std::stoll(v);
      else if (f == "--output")
        a.output = std::stoll(v);
      else if (f == "--speculative")
        a.speculative = v;
      else if (f == "--kv-cache-mb")
        a.kv_mb = std::stoll(v);
      else if (f == "--compute")
        a.compute = v;
      else {
        std::fprintf(stderr, "bench_serve: unknown flag %s\n%s", f.c_str(), kUsage);
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "bench_serve: bad value for %s: %s\n", f.c_str(), v.c_str());
      return 2;
    }
  }
  if (a.prompt < 1 || a.output < 2 || a.kv_mb < 1 ||
      (a.speculative != "none" && a.speculative != "mtp" && a.speculative != "both") ||
      (a.compute != "bf16" && a.compute != "f32")) {
    std::fprintf(stderr, "bench_serve: bad flag values\n%s", kUsage);
    return 2;
  }
  return -1;
}

using Clock = std::chrono::steady_clock;

double pct(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double x = q * double(v.size() - 1);
  const size_t i = size_t(x);
  return i + 1 < v.size() ? v[i] + (x - double(i)) * (v[i + 1] - v[i]) : v.back();
}

struct Level {
  double out_tps = 0, decode_tps = 0, ttft50 = 0, ttft99 = 0, tpot50 = 0, tpot99 = 0;
  double wall = 0, step_bytes = 0, tokens_per_step = 0, experts_per_step = 0;
  int64_t drafted = 0, accepted = 0, steps = 0, tokens = 0;
};

Level run_level(model::Model& m, const Args& a, int64_t C, bool spec, Rng& rng) {
  const auto& c = m.config();
  serve::EngineOptions o;
  o.kv_cache_mb = a.kv_mb;
  o.max_running = std::max<int64_t>(C, 1);
  o.prefill_chunk = 512;
  o.count_experts = true;
  o.speculative = spec ? serve::Speculative::Mtp : serve::Speculative::None;
  serve::Engine e(m, o);
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;
  std::vector<std::vector<Clock::time_point>> times(static_cast<size_t>(C));
  std::vector<serve::RequestStats> stats(static_cast<size_t>(C));
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < C; ++i) {
    serve::RequestParams p;
    p.prompt.resize(size_t(a.prompt));
    for (auto& t : p.prompt) t = int32_t(2 + rng.below(uint64_t(c.vocab_size - 2)));
    p.sampling.temperature = 0;
    p.max_tokens = a.output;
    p.logprobs = false;  // as a client that asks for none
    e.submit(
        p,
        [&, i](const serve::TokenEvent& ev) {
          const auto now = Clock::now();
          std::lock_guard<std::mutex> lk(mu);
          if (ev.token >= 0) times[size_t(i)].push_back(now);
          if (ev.finish != serve::FinishReason::None) {
            ++done;
            cv.notify_all();
          }
        },
        &stats[size_t(i)]);
  }
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done == C; });
  }
  Level L;
  std::vector<double> ttft, tpot;
  Clock::time_point last_first = t0, first_last = Clock::time_point::max(), end = t0;
  for (const auto& t : times) {
    ttft.push_back(std::chrono::duration<double>(t.front() - t0).count());
    tpot.push_back(std::chrono::duration<double>(t.back() - t.front()).count() /
                   double(t.size() - 1));
    last_first = std::max(last_first, t.front());
    first_last = std::min(first_last, t.back());
    end = std::max(end, t.back());
    L.tokens += int64_t(t.size());
  }
  L.wall = std::chrono::duration<double>(end - t0).count();
  L.out_tps = double(L.tokens) / L.wall;
  // Tokens strictly inside the all-decoding window, over its length.
  int64_t in_window = 0;
  for (const auto& t : times)
    for (const auto& x : t) in_window += (x > last_first && x <= first_last) ? 1 : 0;
  const double win = std::chrono::duration<double>(first_last - last_first).count();
  L.decode_tps = win > 0 ? double(in_window) / win : 0;
  L.ttft50 = pct(ttft, 0.5);
  L.ttft99 = pct(ttft, 0.99);
  L.tpot50 = pct(tpot, 0.5);
  L.tpot99 = pct(tpot, 0.99);
  for (const auto& s : stats) {
    L.drafted += s.drafted;
    L.accepted += s.accepted;
  }
  const auto mt = e.metrics();
  L.steps = mt.decode_steps;
  if (mt.decode_steps > 0) {
    L.tokens_per_step = double(mt.decode_step_tokens) / double(mt.decode_steps);
    L.experts_per_step = double(mt.decode_step_experts) / double(mt.decode_steps);
    const double xb = double(m.routed_expert_bytes());
    const double shared =
        double(m.active_weight_bytes()) - double(c.num_experts_per_tok * m.moe_layers()) * xb;
    L.step_bytes = shared + L.experts_per_step * xb;
  }
  return L;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (const int rc = parse_args(argc, argv, a); rc >= 0) return rc;
  try {
    if (a.model_dir.empty()) a.model_dir = std::string(DSV3_BINARY_DIR) + "/bench-1b";
    if (!fs::exists(fs::path(a.model_dir) / "config.json"))
      throw std::runtime_error("no model in " + a.model_dir +
                               " (run bench_model once to make it, or pass --model DIR)");
    const auto levels = bench::parse_int_list(a.concurrency);
    if (levels.empty()) throw std::runtime_error("--concurrency lists no level");
    model::LoadOptions lo;
    lo.compute = a.compute == "bf16" ? cpu::Compute::BF16 : cpu::Compute::F32;
    lo.load_mtp = a.speculative != "none";
    auto m = model::Model::load(a.model_dir, lo);
    bench::HugePageProbe hp(m->total_weight_bytes());
    Rng rng(1);
    std::vector<bool> modes;
    if (a.speculative != "mtp") modes.push_back(false);
    if (a.speculative != "none") modes.push_back(true);

    bench::JsonWriter j;
    j.begin_object();
    j.field("benchmark", "serve");
    j.field("model", a.model_dir);
    j.field("compute", a.compute);
    j.field("threads", omp_get_max_threads());
    j.field("prompt_tokens", a.prompt);
    j.field("output_tokens", a.output);
    j.field("active_weight_bytes_per_token", int64_t(m->active_weight_bytes()));
    j.field("routed_expert_bytes", int64_t(m->routed_expert_bytes()));
    j.field("hugepage_probe_bytes", int64_t(hp.bytes()));
    j.begin_array("levels");
    double single_decode = 0;
    for (const bool spec : modes) {
      for (const int C : levels) {
        const double bw_before = hp.measure(omp_get_max_threads());
        const Level L = run_level(*m, a, C, spec, rng);
        const double bw_after = hp.measure(omp_get_max_threads());
        const double bw = std::max(bw_before, bw_after);
        // Tokens a step's weight read yields at bw: with speculation a verify token is not an
        // output token, so the bound is on forward tokens (the output rate is reported beside it).
        const double bound_tps =
            L.step_bytes > 0 ? bw * 1e9 * L.tokens_per_step / L.step_bytes : 0.0;
        if (!spec && C == 1) single_decode = L.decode_tps;
        j.begin_object();
        j.field("speculative", spec ? "mtp" : "none");
        j.field("concurrency", C);
        j.field("hugepage_sustained_gbs", bw, 1);
        j.field("hugepage_before_gbs", bw_before, 1);
        j.field("hugepage_after_gbs", bw_after, 1);
        j.field("output_tokens_per_s", L.out_tps, 2);
        j.field("decode_tokens_per_s", L.decode_tps, 2);
        j.field("decode_bound_tokens_per_s", bound_tps, 2);
        j.field("decode_pct_of_bound", bound_tps > 0 ? 100.0 * L.decode_tps / bound_tps : 0, 1);
        if (single_decode > 0) j.field("decode_x_single_request", L.decode_tps / single_decode, 2);
        j.field("forward_tokens_per_decode_step", L.tokens_per_step, 2);
        j.field("distinct_experts_per_decode_step", L.experts_per_step, 1);
        j.field("ttft_p50_ms", 1e3 * L.ttft50, 1);
        j.field("ttft_p99_ms", 1e3 * L.ttft99, 1);
        j.field("tpot_p50_ms", 1e3 * L.tpot50, 2);
        j.field("tpot_p99_ms", 1e3 * L.tpot99, 2);
        j.field("wall_s", L.wall, 2);
        if (spec) {
          j.field("drafted", L.drafted);
          j.field("accepted", L.accepted);
          j.field("acceptance", L.drafted ? double(L.accepted) / double(L.drafted) : 0.0, 3);
        }
        j.end_object();
        std::fprintf(stderr, "level %s C=%d: decode %.1f tok/s (bound %.1f)\n",
                     spec ? "mtp" : "none", C, L.decode_tps, bound_tps);
      }
    }
    j.end_array();
    j.end_object();
    j.print();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_serve: %s\n", e.what());
    return 1;
  }
  return 0;
}
