// Where a batched decode step goes: C sequences decode together over a paged latent cache, as the
// serving engine's steps do (Model::forward_batch, one token per sequence, logits of every row),
// and the step's parts are timed (ForwardTimes: attention, FFN, head, the rest). The sequences'
// prompts (random distinct tokens) are prefilled one by one first; then `--steps` decode steps
// run, each token the greedy argmax of the last step's logits. Prints JSON: per-part milliseconds
// per step, the mean and the minimum over the steps (the minimum of each part on its own).
//
// This is the breakdown behind docs/benchmarks.md's serving notes; bench_serve measures the
// engine's throughput against the bandwidth bound.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/rng.hpp"
#include "model/model.hpp"

using namespace dsv3;

namespace {

void usage() {
  std::printf(
      "usage: bench_decode_step [--model DIR] [--concurrency 16] [--prompt 64] [--steps 32]\n"
      "                         [--block 16] [--compute bf16|f32]\n\n"
      "Times the parts of a batched decode step (attention, FFN, head, rest) of C sequences\n"
      "over a paged latent cache (blocks of --block positions), after a --prompt token prefill\n"
      "of each. Threads: OMP_NUM_THREADS (default: all cores). Run it quiet.\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/work/bench-1b", compute = "bf16";
  int64_t C = 16, P = 64, steps = 32, bt = 16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_decode_step: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help") {
      usage();
      return 0;
    } else if (a == "--model") {
      dir = next();
    } else if (a == "--concurrency") {
      C = std::stoll(next());
    } else if (a == "--prompt") {
      P = std::stoll(next());
    } else if (a == "--steps") {
      steps = std::stoll(next());
    } else if (a == "--block") {
      bt = std::stoll(next());
    } else if (a == "--compute") {
      compute = next();
    } else {
      std::fprintf(stderr, "bench_decode_step: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (C < 1 || P < 1 || steps < 1 || bt < 1 || (compute != "bf16" && compute != "f32")) {
    std::fprintf(stderr, "bench_decode_step: bad arguments\n");
    return 2;
  }
  model::LoadOptions lo;
  lo.compute = compute == "bf16" ? cpu::Compute::BF16 : cpu::Compute::F32;
  lo.load_mtp = false;
  auto m = model::Model::load(dir, lo);
  const model::ModelConfig& c = m->config();
  const int64_t V = c.vocab_size, per_seq = (P + steps + bt - 1) / bt;
  model::KVCache cache(c, C * per_seq, bt, false);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(C));
  for (int64_t b = 0; b < C; ++b)
    for (int64_t j = 0; j < per_seq; ++j) tables[size_t(b)].push_back(int32_t(b * per_seq + j));
  const uint64_t seed = 7;
  Rng rng(seed);
  std::vector<int32_t> tok(static_cast<size_t>(C));
  {
    std::vector<int32_t> prompt(static_cast<size_t>(P));
    std::vector<float> logits(static_cast<size_t>(V));
    for (int64_t b = 0; b < C; ++b) {
      for (auto& t : prompt) t = int32_t(rng.below(uint64_t(V)));
      const model::SeqSpan span{0, P, tables[size_t(b)].data(), per_seq};
      const int64_t last = P - 1;
      m->forward_batch(prompt.data(), {&span, 1}, cache, logits.data(), &last, 1);
      tok[size_t(b)] = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
  }
  std::vector<float> logits(static_cast<size_t>(C * V));
  std::vector<model::SeqSpan> spans(static_cast<size_t>(C));
  model::ForwardTimes sum, best{1e30, 1e30, 1e30, 1e30};
  double best_rest = 1e30;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t b = 0; b < C; ++b)
      spans[size_t(b)] = {P + s, 1, tables[size_t(b)].data(), per_seq};
    model::ForwardTimes t;
    model::ForwardOptions fo;
    fo.times = &t;
    m->forward_batch(tok.data(), spans, cache, logits.data(), nullptr, C, fo);
    for (int64_t b = 0; b < C; ++b) {
      const float* l = logits.data() + b * V;
      tok[size_t(b)] = int32_t(std::max_element(l, l + V) - l);
    }
    sum.attention += t.attention;
    sum.ffn += t.ffn;
    sum.head += t.head;
    sum.total += t.total;
    best.attention = std::min(best.attention, t.attention);
    best.ffn = std::min(best.ffn, t.ffn);
    best.head = std::min(best.head, t.head);
    best.total = std::min(best.total, t.total);
    best_rest = std::min(best_rest, t.total - t.attention - t.ffn - t.head);
  }
  const double n = double(steps);
  std::printf(
      "{\"benchmark\": \"decode_step\", \"model\": \"%s\", \"compute\": \"%s\", \"concurrency\": "
      "%lld, \"prompt\": %lld, \"steps\": %lld, \"block\": %lld, \"seed\": %llu,\n"
      " \"mean_ms\": {\"total\": %.3f, \"attention\": %.3f, \"ffn\": %.3f, \"head\": %.3f, "
      "\"rest\": %.3f},\n"
      " \"min_ms\": {\"total\": %.3f, \"attention\": %.3f, \"ffn\": %.3f, \"head\": %.3f, "
      "\"rest\": %.3f}}\n",
      dir.c_str(), compute.c_str(), (long long)C, (long long)P, (long long)steps, (long long)bt,
      (unsigned long long)seed, 1e3 * sum.total / n, 1e3 * sum.attention / n, 1e3 * sum.ffn / n,
      1e3 * sum.head / n, 1e3 * (sum.total - sum.attention - sum.ffn - sum.head) / n,
      1e3 * best.total, 1e3 * best.attention, 1e3 * best.ffn, 1e3 * best.head, 1e3 * best_rest);
  return 0;
}
