// What `dsv3 serve` and `dsv3 chat` share: the engine flags, and loading the model, its tokenizer
// and the engine from them.
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include "model/model.hpp"
#include "options.hpp"
#include "serve/engine.hpp"
#include "tokenizer/tokenizer.hpp"

namespace dsv3::cli {

struct EngineFlags {
  std::string model, tokenizer, speculative = "none";
  int64_t kv_cache_mb = 1024, max_running = 32, prefill_chunk = 256, block_tokens = 16;
  int64_t num_draft = 1, max_context = 0;
  bool no_prefix_cache = false, mmap = false;
  RunFlags run;

  void add(CLI::App* sub) {
    sub->add_option("--model", model, "checkpoint directory (HF layout)")->required();
    sub->add_option("--tokenizer", tokenizer, "tokenizer directory (default: the model's)");
    add_int_option(sub, "--kv-cache-mb", kv_cache_mb, 1, int64_t(1) << 30,
                   "latent KV cache budget in MiB (default 1024)");
    sub->add_option("--speculative", speculative, "none or mtp (MTP draft, main-model verify)")
        ->capture_default_str();
    add_int_option(sub, "--num-draft", num_draft, 1, 16, "MTP draft tokens per step (default 1)");
    add_int_option(sub, "--max-running", max_running, 1, 4096,
                   "sequences in the running batch at most (default 32)");
    add_int_option(sub, "--prefill-chunk", prefill_chunk, 1, 1 << 20,
                   "prompt tokens per engine step (default 256)");
    add_int_option(sub, "--block-tokens", block_tokens, 1, 4096,
                   "tokens per KV cache block (default 16)");
    add_int_option(sub, "--max-context", max_context, 0, INT32_MAX,
                   "context length (default 0: the model's max_position_embeddings)");
    sub->add_flag("--no-prefix-cache", no_prefix_cache, "do not share cached prompt prefixes");
    sub->add_flag("--mmap", mmap, "read weights from the mmapped checkpoint (no copy)");
    run.add(sub, "bf16");
  }

  serve::EngineOptions engine_options() const {
    serve::EngineOptions o;
    o.kv_cache_mb = kv_cache_mb;
    o.block_tokens = block_tokens;
    o.max_running = max_running;
    o.prefill_chunk = prefill_chunk;
    o.prefix_cache = !no_prefix_cache;
    if (speculative == "mtp")
      o.speculative = serve::Speculative::Mtp;
    else
      DSV3_CHECK(speculative == "none", "--speculative must be none or mtp, got '{}'", speculative);
    o.num_draft = num_draft;
    o.max_context = max_context;
    return o;
  }

  tok::Tokenizer load_tokenizer() const {
    const std::string dir = tokenizer.empty() ? model : tokenizer;
    DSV3_CHECK(std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json"),
               "{} has no tokenizer.json (give --tokenizer DIR)", dir);
    return tok::Tokenizer::load(dir);
  }

  std::unique_ptr<model::Model> load_model() const {
    run.apply();
    model::LoadOptions lo;
    lo.compute = run.compute();
    lo.load_mtp = speculative == "mtp";
    if (mmap) lo.residency = io::Residency::Map;
    return model::Model::load(model, lo);
  }
};

}  // namespace dsv3::cli
