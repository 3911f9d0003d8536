// Model benchmark: batch-1 decode tokens/s and prefill tokens/s of a 512-token prompt on the
// ~1.2B-total / ~0.2B-active config (bench/configs/bench-1b.json, BF16 weights), on 1 and 2
// threads, beside the limits measured in the same run: memory bandwidth (decode reads every
// active weight once per token) and BF16 GEMM peak (prefill). Prints JSON.
//
//   bench_model [--model DIR] [--threads 1,2] [--prompt 512] [--decode 128] [--rounds 8]
//               [--residency huge-page-copy|mmap]
// Decode runs `--decode` steps in `--rounds` rounds, each set against a bandwidth probe taken
// right before it; the JSON gives the medians over rounds (and the range of the percentages)
// and where a decode step's time goes (mean milliseconds per token by part).
// Without --model, a random checkpoint is made once under build/bench-1b by `dsv3 init`'s code.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "model/export.hpp"
#include "model/model.hpp"

using namespace dsv3;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::string model_dir, threads_s = "1,2";
  int64_t prompt = 512, decode = 128;
  int rounds = 8;
  std::string residency = "huge-page-copy";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--residency")
      residency = argv[i + 1];
    else if (a == "--model")
      model_dir = argv[i + 1];
    else if (a == "--threads")
      threads_s = argv[i + 1];
    else if (a == "--prompt")
      prompt = std::stoll(argv[i + 1]);
    else if (a == "--decode")
      decode = std::stoll(argv[i + 1]);
    else if (a == "--rounds")
      rounds = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  try {
    if (model_dir.empty()) {
      model_dir = "bench-1b";
      if (!fs::exists(fs::path(model_dir) / "config.json")) {
        std::fprintf(stderr, "making a random BF16 checkpoint in %s (once)\n", model_dir.c_str());
        auto c = model::load_config(std::string(DSV3_SOURCE_DIR) + "/bench/configs/bench-1b.json");
        model::save_hf_checkpoint(model_dir, c, [](const model::ParamSpec& s, float* d) {
          model::random_param_fill(s, d, 0);
        });
      }
    }
    model::LoadOptions lo;
    lo.compute = cpu::Compute::BF16;
    lo.load_mtp = false;
    if (residency == "mmap")
      lo.residency = io::Residency::Map;
    else if (residency != "huge-page-copy")
      throw std::runtime_error("--residency must be mmap or huge-page-copy");
    auto m = model::Model::load(model_dir, lo);
    const auto& c = m->config();
    const size_t active = m->active_weight_bytes();
    Rng rng(1);
    std::printf("{\n  \"benchmark\": \"model\",\n  \"model\": \"%s\",\n  \"residency\": \"%s\",\n",
                model_dir.c_str(), residency.c_str());
    std::printf("  \"active_weight_bytes_per_token\": %zu,\n  \"total_weight_bytes\": %zu,\n",
                active, m->total_weight_bytes());
    std::printf("  \"kv_cache_bytes_per_token\": %zu,\n  \"runs\": [\n",
                model::KVCache::bytes_per_token(c));
    auto threads = bench::parse_int_list(threads_s);
    if (rounds < 1) throw std::runtime_error("--rounds must be at least 1");
    bench::BandwidthProbe probe;
    for (size_t ti = 0; ti < threads.size(); ++ti) {
      const int nt = threads[ti];
      set_num_threads(nt);
      const double peak = bench::measure_gemm_peak_gflops(true, nt);
      // Prefill: a 512-token prompt, BF16 GEMMs; the best of 3.
      std::vector<int32_t> toks(static_cast<size_t>(prompt));
      for (auto& t : toks) t = int32_t(2 + rng.below(uint64_t(c.vocab_size - 2)));
      std::vector<float> logits(static_cast<size_t>(c.vocab_size));
      model::ForwardOptions fo;
      fo.all_logits = false;
      double best_prefill = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        model::KVCache cache(c, 1, prompt + decode + 1, false);
        auto t0 = std::chrono::steady_clock::now();
        m->forward(toks.data(), 1, prompt, 0, cache, logits.data(), fo);
        best_prefill = std::min(best_prefill, bench::seconds_since(t0));
      }
      // Decode: batch 1 after a 16-token prompt, in `rounds` rounds of decode/rounds steps, each
      // beside a bandwidth probe of its own (8 short passes). This VM's bandwidth drifts by up to
      // 2× within minutes, so each round is set against the probe taken next to it and the
      // medians over the rounds are reported.
      const int64_t steps = std::max<int64_t>(1, decode / rounds);
      model::KVCache cache(c, 1, 16 + steps * rounds + 1, false);
      m->forward(toks.data(), 1, 16, 0, cache, logits.data(), fo);
      int32_t tok = toks[16];
      int64_t pos = 16;
      std::vector<double> round_bw, round_median_bw, round_tps, round_pct;
      model::ForwardTimes times;
      fo.times = &times;
      for (int r = 0; r < rounds; ++r) {
        const auto pr = probe.measure(nt, 8);
        const double rbw = pr.best;
        round_median_bw.push_back(pr.median);
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t s = 0; s < steps; ++s) {
          m->forward(&tok, 1, 1, pos++, cache, logits.data(), fo);
          tok = int32_t(2 + rng.below(uint64_t(c.vocab_size - 2)));
        }
        const double tps = double(steps) / bench::seconds_since(t0);
        round_bw.push_back(rbw);
        round_tps.push_back(tps);
        round_pct.push_back(100.0 * tps * double(active) / 1e9 / rbw);
      }
      fo.times = nullptr;
      const double n_steps = double(steps * rounds);
      const double decode_tps = bench::median(round_tps);
      const double decode_gbs = decode_tps * double(active) / 1e9;
      const double decode_pct = bench::median(round_pct);
      const double decode_bw = bench::median(round_bw);
      const double median_bw = bench::median(round_median_bw);
      const double prefill_tps = double(prompt) / best_prefill;
      // Prefill FLOPs: 2 x active parameters (excluding the embedding row) per token, plus
      // attention (QK and PV over the causal half, absorbed: H x (R + Dr) and H x R per pair).
      const double flops_tok = 2.0 * double(active) / 2.0;  // BF16: 2 bytes per parameter
      const double attn = 2.0 * c.num_attention_heads *
                          double(c.kv_lora_rank * 2 + c.qk_rope_head_dim) * (prompt / 2.0) *
                          c.num_hidden_layers;
      const double prefill_gflops = prefill_tps * (flops_tok + attn) / 1e9;
      std::printf(
          "    {\"threads\": %d, \"memory_bandwidth_gbs\": %.1f, \"median_pass_gbs\": %.1f, "
          "\"bf16_gemm_peak_gflops\": %.1f,\n"
          "     \"decode_tokens_per_s\": %.2f, \"decode_weight_gbs\": %.1f, "
          "\"decode_pct_of_bandwidth\": %.1f, \"decode_pct_min_max\": [%.1f, %.1f],\n"
          "     \"decode_ms_per_token\": {\"attention\": %.3f, \"ffn\": %.3f, \"head\": %.3f, "
          "\"other\": %.3f},\n"
          "     \"prefill_tokens\": %lld, \"prefill_tokens_per_s\": %.1f, \"prefill_gflops\": "
          "%.1f, "
          "\"prefill_pct_of_bf16_peak\": %.1f}%s\n",
          nt, decode_bw, median_bw, peak, decode_tps, decode_gbs, decode_pct,
          *std::min_element(round_pct.begin(), round_pct.end()),
          *std::max_element(round_pct.begin(), round_pct.end()), 1e3 * times.attention / n_steps,
          1e3 * times.ffn / n_steps, 1e3 * times.head / n_steps,
          1e3 * (times.total - times.attention - times.ffn - times.head) / n_steps,
          (long long)prompt, prefill_tps, prefill_gflops, 100.0 * prefill_gflops / peak,
          ti + 1 < threads.size() ? "," : "");
      std::fflush(stdout);
    }
    std::printf("  ]\n}\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
