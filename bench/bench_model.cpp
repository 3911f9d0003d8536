// Model benchmark: batch-1 decode tokens/s and prefill tokens/s of a 512-token prompt on the
// ~1.2B-total / ~0.2B-active config (bench/configs/bench-1b.json, BF16 or FP8 weights), on 1 and 2
// threads, beside the bandwidth limit measured in the same run, and the process's peak resident
// memory against the weight bytes. Prints JSON; `--help` for the flags.
//
// The limit: decode reads every active weight once per token, so its limit is the sustained read
// of a buffer placed like the weights (HugePageProbe: 2 MiB-aligned, MADV_HUGEPAGE, full-entropy
// data, at least the size of all weights, read whole on the same thread count), one sweep right
// before and one right after each decode round. Each round is set against the mean of its two
// sweeps; the medians over rounds are reported. A decode figure above 100% would mean the limit is
// wrong (the sweep reads as decode does at its best: sequential streams, prefetched ahead).
//
// Peak RSS: VmHWM of /proc/self/status. The probe buffer is as large as the weights, so the model's
// own peak is taken before the probe exists (after loading and a prefill and decode on the largest
// thread count) and, after the runs, as VmHWM minus the probe's bytes; the larger is reported.
//
// Prefill is set against the BF16 dot-product peak (a register-only vdpbf16ps loop; oneDNN's
// 2048² GEMM rate is printed beside it as a peer) with the FLOPs it actually performs: the LM head
// once per sequence (only the last logits are computed), the router once per token, the attention
// path Auto takes (naive from kNaiveMinTokens tokens: K/V expanded through kv_b for every
// position), attention counted over the causal pairs only. Without --model, a random checkpoint of
// the bench config is made once under --checkpoint-dir.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/fma_peak.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "model/export.hpp"
#include "model/mla.hpp"
#include "model/model.hpp"

using namespace dsv3;
namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: bench_model [--model DIR | --checkpoint-dir DIR] [--dtype bf16|fp8] [--threads 1,2]\n"
    "                   [--prompt 512] [--decode 128] [--rounds 8] [--residency "
    "huge-page-copy|mmap]\n"
    "Decode and prefill speed of a DeepSeek-V3 checkpoint beside the sustained huge-page read\n"
    "bandwidth and the BF16 GEMM peak measured in the same run, and the peak resident memory;\n"
    "prints JSON.\n"
    "  --model DIR           HF checkpoint dir to load (an existing one)\n"
    "  --checkpoint-dir DIR  without --model: where the random checkpoint of\n"
    "                        bench/configs/bench-1b.json is kept, made there once if missing\n"
    "                        (default $XDG_CACHE_HOME/dsv3/bench-1b[-fp8], else\n"
    "                        ~/.cache/dsv3/..., else /tmp/dsv3-bench-1b[-fp8]; 2.85 GB BF16,\n"
    "                        1.56 GB FP8)\n"
    "  --dtype D             dtype of a checkpoint made here: bf16 (default) or fp8 (e4m3 with\n"
    "                        128x128 block scales, the DeepSeek-V3 release format)\n"
    "  --threads LIST        thread counts to run, comma-separated (default 1,2)\n"
    "  --prompt N            prefill prompt length in tokens (default 512)\n"
    "  --decode N            decode steps in all, split over the rounds (default 128)\n"
    "  --rounds N            decode rounds, each between two bandwidth sweeps (default 8)\n"
    "  --residency R         huge-page-copy (default) or mmap\n"
    "  --help                this text\n";

struct Args {
  std::string model_dir, checkpoint_dir, dtype = "bf16", threads = "1,2",
                                         residency = "huge-page-copy";
  int64_t prompt = 512, decode = 128;
  int rounds = 8;
};

// Parses argv into a; returns -1 to go on, else the exit status (help: 0, bad flags: 2).
int parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    static const char* kFlags[] = {"--model",  "--checkpoint-dir", "--dtype",  "--threads",
                                   "--prompt", "--decode",         "--rounds", "--residency"};
    if (std::find_if(std::begin(kFlags), std::end(kFlags), [&](const char* k) { return f == k; }) ==
        std::end(kFlags)) {
      std::fprintf(stderr, "bench_model: unknown flag '%s'\n%s", f.c_str(), kUsage);
      return 2;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_model: %s needs a value\n%s", f.c_str(), kUsage);
      return 2;
    }
    const std::string v = argv[++i];
    try {
      size_t used = v.size();
      if (f == "--model")
        a.model_dir = v;
      else if (f == "--checkpoint-dir")
        a.checkpoint_dir = v;
      else if (f == "--dtype")
        a.dtype = v;
      else if (f == "--threads")
        a.threads = v;
      else if (f == "--residency")
        a.residency = v;
      else if (f == "--prompt")
        a.prompt = std::stoll(v, &used);
      else if (f == "--decode")
        a.decode = std::stoll(v, &used);
      else
        a.rounds = std::stoi(v, &used);
      if (used != v.size()) throw std::invalid_argument(v);
    } catch (const std::exception&) {
      std::fprintf(stderr, "bench_model: %s: '%s' is not a number\n%s", f.c_str(), v.c_str(),
                   kUsage);
      return 2;
    }
  }
  if (a.prompt < 1 || a.decode < 1 || a.rounds < 1) {
    std::fprintf(stderr, "bench_model: --prompt, --decode and --rounds must be at least 1\n");
    return 2;
  }
  if (a.residency != "huge-page-copy" && a.residency != "mmap") {
    std::fprintf(stderr, "bench_model: --residency must be huge-page-copy or mmap\n");
    return 2;
  }
  if (a.dtype != "bf16" && a.dtype != "fp8") {
    std::fprintf(stderr, "bench_model: --dtype must be bf16 or fp8\n");
    return 2;
  }
  if (!a.model_dir.empty() && !a.checkpoint_dir.empty()) {
    std::fprintf(stderr, "bench_model: --model and --checkpoint-dir exclude each other\n");
    return 2;
  }
  return -1;
}

// The default home of the made checkpoint: a cache dir, never the working directory.
std::string default_checkpoint_dir(const std::string& dtype) {
  const std::string leaf = dtype == "fp8" ? "bench-1b-fp8" : "bench-1b";
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x)
    return std::string(x) + "/dsv3/" + leaf;
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/dsv3/" + leaf;
  return "/tmp/dsv3-" + leaf;
}

// Resident-set figures of this process from /proc/self/status, in bytes (-1 when unreadable).
int64_t proc_status_bytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(f, line))
    if (line.rfind(k, 0) == 0) return std::stoll(line.substr(k.size())) * 1024;  // "... kB"
  return -1;
}

// FLOPs (2 per multiply-add) of Model::forward on one sequence of T tokens from position 0 with
// only the last logits: every weight matrix a token passes through (the router once, K routed
// and the shared experts), kv_b once per position on the naive path, the LM head once, and the
// attention products of the path Auto takes over the T(T+1)/2 causal pairs. Norms, RoPE,
// softmax and the embedding lookup are not counted.
double prefill_flops(const model::ModelConfig& c, int64_t T) {
  const double D = double(c.hidden_size), H = double(c.num_attention_heads);
  const double Dn = double(c.qk_nope_head_dim), Dr = double(c.qk_rope_head_dim),
               Dv = double(c.v_head_dim), R = double(c.kv_lora_rank);
  const double pairs = double(T) * double(T + 1) / 2.0;
  const bool naive = T >= model::kNaiveMinTokens;
  double per_token = 0, per_seq = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    double mla = c.q_lora_rank ? double(*c.q_lora_rank) * (D + H * (Dn + Dr)) : D * H * (Dn + Dr);
    mla += D * (R + Dr) + H * Dv * D;  // kv_a, o_proj
    per_token += 2 * mla;
    if (naive)  // kv_b expands every position; QK over Dn + Dr, PV over Dv per causal pair
      per_seq += 2 * double(T) * H * (Dn + Dv) * R + 2 * pairs * H * (Dn + Dr + Dv);
    else  // q·W_UK and lat·W_UV per token; scores over R + Dr and the latent sum over R per pair
      per_seq += 2 * double(T) * H * (Dn * R + R * Dv) + 2 * pairs * H * (2 * R + Dr);
    if (c.is_moe_layer(l))
      per_token += 2 * (D * double(c.n_routed_experts) +
                        3 * D * double(c.moe_intermediate_size) *
                            double(c.num_experts_per_tok + c.n_shared_experts));
    else
      per_token += 2 * 3 * D * double(c.intermediate_size);
  }
  per_seq += 2 * D * double(c.vocab_size);  // LM head on the last position
  return per_token * double(T) + per_seq;
}

void ensure_default_checkpoint(const std::string& dir, const std::string& dtype) {
  if (fs::exists(fs::path(dir) / "config.json")) return;
  std::fprintf(stderr, "making a random %s checkpoint in %s (once)\n", dtype.c_str(), dir.c_str());
  auto c = model::load_config(std::string(DSV3_SOURCE_DIR) + "/bench/configs/bench-1b.json");
  model::ExportOptions eo;
  eo.dtype = dtype == "fp8" ? DType::F8_E4M3 : DType::BF16;
  model::save_hf_checkpoint(
      dir, c, [](const model::ParamSpec& s, float* d) { model::random_param_fill(s, d, 0); }, eo);
}

double min_of(const std::vector<double>& v) {
  return *std::min_element(v.begin(), v.end());
}
double max_of(const std::vector<double>& v) {
  return *std::max_element(v.begin(), v.end());
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (const int rc = parse_args(argc, argv, a); rc >= 0) return rc;
  try {
    const auto threads = bench::parse_int_list(a.threads);
    if (threads.empty()) throw std::runtime_error("--threads lists no thread count");
    if (a.model_dir.empty()) {
      a.model_dir = a.checkpoint_dir.empty() ? default_checkpoint_dir(a.dtype) : a.checkpoint_dir;
      ensure_default_checkpoint(a.model_dir, a.dtype);
    }
    // The BF16 GEMM peaks first: their matrices (2048² BF16 A and B, F32 C: 32 MB) are the
    // benchmark's, and measured after the probe existed they counted in the model's peak RSS
    // (FP8 bench model: 1.115 of weights + KV before, 1.079 after). Freed here, they stay below
    // the model's own high-water mark.
    std::vector<double> peaks;
    std::vector<double> dot_peaks;  // the prefill's limit: a register-only vdpbf16ps loop
    for (const int nt : threads) {
      peaks.push_back(bench::measure_gemm_peak_gflops(true, nt));
      dot_peaks.push_back(measure_bf16_dot_peak(nt).flops / 1e9);
    }
    model::LoadOptions lo;
    lo.compute = cpu::Compute::BF16;
    lo.load_mtp = false;
    if (a.residency == "mmap") lo.residency = io::Residency::Map;
    auto m = model::Model::load(a.model_dir, lo);
    const auto& c = m->config();
    const size_t active = m->active_weight_bytes(), weights = m->total_weight_bytes();
    const int64_t prompt = a.prompt;
    const int max_threads = *std::max_element(threads.begin(), threads.end());
    Rng rng(1);
    std::vector<int32_t> toks(static_cast<size_t>(std::max<int64_t>(prompt, 17)));
    for (auto& t : toks) t = int32_t(2 + rng.below(uint64_t(c.vocab_size - 2)));
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    model::ForwardOptions fo;
    fo.all_logits = false;
    const int64_t steps = std::max<int64_t>(1, a.decode / a.rounds);
    const int64_t kv_tokens = std::max(prompt + 1, 16 + steps * a.rounds + 1);
    // The model's peak before the probe exists: a prefill and a few decode steps on the largest
    // thread count (the per-thread buffers of both paths are then allocated).
    {
      set_num_threads(max_threads);
      model::KVCache cache(c, 1, prompt + 4, false);
      m->forward(toks.data(), 1, prompt, 0, cache, logits.data(), fo);
      for (int64_t p = prompt; p < prompt + 3; ++p)
        m->forward(&toks[1], 1, 1, p, cache, logits.data(), fo);
    }
    const int64_t hwm_model = proc_status_bytes("VmHWM");
    bench::HugePageProbe hp(weights);

    bench::JsonWriter j;
    auto range = [&j](const char* key, const std::vector<double>& v, int precision) {
      j.begin_array(key);
      j.field(nullptr, min_of(v), precision);
      j.field(nullptr, max_of(v), precision);
      j.end_array();
    };
    j.begin_object();
    j.field("benchmark", "model");
    j.field("model", a.model_dir);
    j.field("weight_dtype", c.quantization.enabled ? "fp8_e4m3_block128" : c.torch_dtype);
    j.field("residency", a.residency);
    // What the bytes allow: decode at a fixed read bandwidth, weights only, is at most this many
    // times the BF16 twin's tokens/s (1 for a BF16 model; the LM head and router stay BF16/F32
    // in the FP8 format).
    const size_t active_bf16 = m->active_weight_bytes(true);
    j.field("active_weight_bytes_per_token", int64_t(active));
    j.field("active_weight_bytes_per_token_as_bf16", int64_t(active_bf16));
    j.field("decode_speedup_bound_vs_bf16", double(active_bf16) / double(active), 3);
    j.field("total_weight_bytes", int64_t(weights));
    j.field("kv_cache_bytes_per_token", int64_t(model::KVCache::bytes_per_token(c)));
    j.field("hugepage_probe_bytes", int64_t(hp.bytes()));
    j.field("hugepage_probe_thp_fraction", hp.huge_page_fraction(), 3);
    j.field("prefill_attention_path", prompt >= model::kNaiveMinTokens ? "naive" : "absorbed");
    j.field("prefill_gflop_per_sequence", prefill_flops(c, prompt) / 1e9, 3);
    j.begin_array("runs");
    for (size_t ti = 0; ti < threads.size(); ++ti) {
      const int nt = threads[ti];
      set_num_threads(nt);
      const double peak = peaks[ti];
      // Prefill: one prompt, only the last logits; the best of 3.
      double best_prefill = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        model::KVCache cache(c, 1, prompt + 1, false);
        auto t0 = std::chrono::steady_clock::now();
        m->forward(toks.data(), 1, prompt, 0, cache, logits.data(), fo);
        best_prefill = std::min(best_prefill, bench::seconds_since(t0));
      }
      // Decode: batch 1 after a 16-token prompt, in rounds of decode/rounds steps, each between
      // two sustained sweeps of the huge-page probe (the after-sweep of a round is the
      // before-sweep of the next).
      model::KVCache cache(c, 1, 16 + steps * a.rounds + 1, false);
      m->forward(toks.data(), 1, 16, 0, cache, logits.data(), fo);
      int32_t tok = toks[16];
      int64_t pos = 16;
      std::vector<double> round_hp, round_tps, round_pct_hp;
      model::ForwardTimes times;
      fo.times = &times;
      double before = hp.measure(nt);
      for (int r = 0; r < a.rounds; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t s = 0; s < steps; ++s) {
          m->forward(&tok, 1, 1, pos++, cache, logits.data(), fo);
          tok = int32_t(2 + rng.below(uint64_t(c.vocab_size - 2)));
        }
        const double tps = double(steps) / bench::seconds_since(t0);
        const double after = hp.measure(nt), hbw = 0.5 * (before + after);
        round_hp.push_back(hbw);
        round_tps.push_back(tps);
        round_pct_hp.push_back(100.0 * tps * double(active) / 1e9 / hbw);
        before = after;
      }
      fo.times = nullptr;
      const double n_steps = double(steps * a.rounds);
      const double decode_tps = bench::median(round_tps);
      const double decode_gbs = decode_tps * double(active) / 1e9;
      const double hp_bw = bench::median(round_hp);
      const double prefill_tps = double(prompt) / best_prefill;
      const double prefill_gflops = prefill_flops(c, prompt) / best_prefill / 1e9;

      j.begin_object();
      j.field("threads", nt);
      j.field("hugepage_sustained_gbs", hp_bw, 1);
      range("hugepage_sustained_gbs_min_max_rounds", round_hp, 1);
      j.field("decode_tokens_per_s", decode_tps, 2);
      j.field("decode_weight_gbs", decode_gbs, 2);
      j.field("decode_pct_of_hugepage_sustained", bench::median(round_pct_hp), 1);
      range("decode_pct_of_hugepage_min_max_rounds", round_pct_hp, 1);
      j.begin_object("decode_ms_per_token");
      j.field("attention", 1e3 * times.attention / n_steps, 3);
      j.field("ffn", 1e3 * times.ffn / n_steps, 3);
      j.field("head", 1e3 * times.head / n_steps, 3);
      j.field("other", 1e3 * (times.total - times.attention - times.ffn - times.head) / n_steps, 3);
      j.end_object();
      j.field("bf16_gemm_peak_gflops", peak, 1);
      j.field("prefill_tokens", prompt);
      j.field("prefill_tokens_per_s", prefill_tps, 1);
      j.field("prefill_gflops", prefill_gflops, 1);
      j.field("bf16_dot_peak_gflops", dot_peaks[ti], 1);
      j.field("prefill_pct_of_bf16_dot_peak", 100.0 * prefill_gflops / dot_peaks[ti], 1);
      j.end_object();
    }
    j.end_array();
    // See the file comment: the model's peak excludes the probe buffer.
    const int64_t hwm_end = proc_status_bytes("VmHWM");
    const int64_t peak_rss = std::max(hwm_model, hwm_end - int64_t(hp.bytes()));
    const int64_t kv_bytes = int64_t(model::KVCache::bytes_per_token(c)) * kv_tokens;
    j.field("peak_rss_bytes", peak_rss);
    j.field("peak_rss_before_probe_bytes", hwm_model);
    j.field("kv_cache_bytes_largest", kv_bytes);
    j.field("peak_rss_over_weights_plus_kv", double(peak_rss) / double(int64_t(weights) + kv_bytes),
            3);
    j.end_object();
    j.print();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
