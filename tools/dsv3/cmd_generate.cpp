// `dsv3 generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [-n N] [sampling flags]`:
// streams the text (token ids without a tokenizer) as it is made and ends with prefill and decode
// speed.
#include <cstdio>
#include <sstream>

#include <filesystem>

#include "command.hpp"
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

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      long v = std::stol(item, &used);
      DSV3_CHECK(used == item.size(), "--prompt-ids: '{}' is not an integer", item);
      ids.push_back(int32_t(v));
    } catch (const std::logic_error&) {
      DSV3_FAIL("--prompt-ids: '{}' is not an integer", item);
    }
  }
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
  sub->add_option("-n,--max-new-tokens", a->n, "tokens to generate")->capture_default_str();
  sub->add_option("--batch", a->batch, "sequences generated together")->capture_default_str();
  sub->add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  sub->add_option("--top-k", a->top_k, "0 = off")->capture_default_str();
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
