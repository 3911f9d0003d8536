// `dsv3 generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [-n N] [sampling flags]`:
// streams the text (token ids without a tokenizer) as it is made and ends with prefill and decode
// speed.
#include <cstdio>
#include <sstream>

#include <filesystem>

#include "command.hpp"
#include "core/memory.hpp"
#include "model/footprint.hpp"
#include "model/model.hpp"
#include "options.hpp"
#include "serve/generate.hpp"
#include "tokenizer/tokenizer.hpp"

namespace {
struct GenerateArgs {
  std::string model, prompt, prompt_ids, tokenizer;
  bool chat = false;
  int64_t n = 64, batch = 1;
  float temperature = 0.8f, top_p = 0.95f;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool no_stop = false;
  bool mmap = false;
  dsv3::cli::RunFlags run;
};

// Token ids are int32: a larger value is an error, not a wrapped id.
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    ids.push_back(int32_t(dsv3::cli::parse_int("--prompt-ids:", item, 0, INT32_MAX)));
  DSV3_CHECK(!ids.empty(), "--prompt-ids is empty");
  return ids;
}

// True when text ends in U+FFFD, which the byte-level decoder emits for an incomplete UTF-8
// sequence (the rest of the character is in a token not yet generated).
bool ends_with_partial_char(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

void run_generate(const GenerateArgs& a) {
  using namespace dsv3;
  a.run.apply();
  serve::validate_sampling({a.temperature, a.top_k, a.top_p, a.seed});
  DSV3_CHECK(a.prompt_ids.empty() != a.prompt.empty(), "give one of --prompt or --prompt-ids");
  // The tokenizer: --tokenizer, else the one stored with the model.
  std::optional<tok::Tokenizer> tk;
  const std::string tdir = a.tokenizer.empty() ? a.model : a.tokenizer;
  if (!a.tokenizer.empty() ||
      std::filesystem::exists(std::filesystem::path(tdir) / "tokenizer.json"))
    tk = tok::Tokenizer::load(tdir);
  std::vector<int32_t> ids;
  if (!a.prompt.empty()) {
    DSV3_CHECK(tk,
               "--prompt needs a tokenizer: {} has no tokenizer.json (give --tokenizer DIR or "
               "--prompt-ids)",
               a.model);
    if (a.chat) {
      std::vector<tok::ChatMessage> msgs(1);
      msgs[0].role = "user";
      msgs[0].content = a.prompt;
      ids = tk->encode(tk->apply_chat_template(msgs, true), false);
    } else {
      ids = tk->encode(a.prompt, true);
    }
    DSV3_CHECK(!ids.empty(), "the prompt encodes to no tokens");
  } else {
    ids = parse_ids(a.prompt_ids);
  }
  model::LoadOptions lo;
  lo.compute = a.run.compute();
  lo.load_mtp = false;
  if (a.mmap) lo.residency = io::Residency::Map;
  const model::ModelConfig mc = model::load_config(a.model);
  check_fits_in_memory(
      model::generate_memory_bytes(
          mc, a.batch, std::min<int64_t>(mc.max_position_embeddings, int64_t(ids.size()) + a.n), 1),
      fmt::format("generating {} sequences", a.batch));
  auto m = model::Model::load(a.model, lo);
  for (int32_t id : ids)
    DSV3_CHECK(id >= 0 && id < m->config().vocab_size,
               "prompt token {} is outside the model's vocabulary [0, {})", id,
               m->config().vocab_size);
  serve::GenerateOptions go;
  go.max_new_tokens = a.n;
  go.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  go.stop_at_eos = !a.no_stop;
  std::vector<std::vector<int32_t>> prompts(size_t(a.batch), ids);
  serve::GenerateStats st;
  std::fprintf(stderr, "seed %llu\n", (unsigned long long)a.seed);
  // With a tokenizer the first sequence streams as text: the prompt, then the continuation,
  // decoded from all tokens so far (multi-byte characters split across tokens are held back
  // until complete). Without one, token ids.
  std::vector<int32_t> out;
  std::string text;  // decoded continuation so far
  size_t shown = 0;
  if (tk && !a.prompt.empty()) std::fputs(a.prompt.c_str(), stdout);
  std::fflush(stdout);
  serve::generate(
      *m, prompts, go,
      [&](int64_t b, int32_t tok) {
        if (b != 0) return;
        if (!tk) {
          std::printf("%d ", tok);
        } else {
          out.push_back(tok);
          text = tk->decode(out, /*skip_special_tokens=*/true);
          if (text.size() > shown && !ends_with_partial_char(text)) {
            std::fwrite(text.data() + shown, 1, text.size() - shown, stdout);
            shown = text.size();
          }
        }
        std::fflush(stdout);
      },
      &st);
  // What was held back as an incomplete character when generation ended.
  if (text.size() > shown) std::fwrite(text.data() + shown, 1, text.size() - shown, stdout);
  std::printf("\n");
  std::fprintf(
      stderr,
      "prefill: %lld tokens in %.3f s (%.1f tok/s); decode: %lld tokens in %.3f s (%.2f tok/s)\n",
      (long long)st.prompt_tokens, st.prefill_seconds, st.prefill_tokens_per_s(),
      (long long)st.generated_tokens, st.decode_seconds, st.decode_tokens_per_s());
}

void setup(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand("generate", "Generate text from a checkpoint");
  sub->add_option("--model", a->model, "checkpoint directory (HF layout)")->required();
  sub->add_option("--prompt", a->prompt, "prompt text");
  sub->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids");
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer directory (default: the model's)");
  sub->add_flag("--chat", a->chat, "wrap the prompt as a user turn of the chat template");
  dsv3::cli::add_int_option(sub, "-n,--max-new-tokens", a->n, 1, INT32_MAX,
                            "tokens to generate (default 64)");
  dsv3::cli::add_int_option(sub, "--batch", a->batch, 1, INT32_MAX,
                            "sequences generated together (default 1)");
  sub->add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  dsv3::cli::add_int_option(sub, "--top-k", a->top_k, 0, INT32_MAX, "0 = off (default 0)");
  sub->add_option("--top-p", a->top_p, "1 = off")->capture_default_str();
  sub->add_option("--seed", a->seed, "sampling seed")->capture_default_str();
  sub->add_flag("--no-stop", a->no_stop, "do not stop at the end-of-sequence token");
  sub->add_flag("--mmap", a->mmap,
                "read weights from the mmapped checkpoint (no copy; default: a huge-page copy, "
                "faster decode)");
  a->run.add(sub, "bf16");
  sub->callback([a] { run_generate(*a); });
}
}  // namespace
DSV3_COMMAND(setup);
