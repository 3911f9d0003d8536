// `dsv3 chat --model DIR [--system TEXT] [sampling flags] [engine flags]`: an interactive chat in
// the terminal on the serving engine. Each line read is a user turn; the reply streams as it is
// generated and joins the history, which goes back through the model's chat template every turn
// (the engine's prefix cache makes the repeated history cheap). /reset clears the history, /exit
// or end of input quits.
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iostream>
#include <mutex>

#include "command.hpp"
#include "serve/text_stream.hpp"
#include "serve_common.hpp"

namespace {
struct ChatArgs {
  dsv3::cli::EngineFlags engine;
  std::string system;
  float temperature = 0.7f, top_p = 0.95f;
  int64_t top_k = 0, max_tokens = 512;
  uint64_t seed = 0;
};

// The engine's events for one reply, handed from the engine thread to this one.
struct Reply {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<dsv3::serve::TokenEvent> events;
  void push(const dsv3::serve::TokenEvent& ev) {
    {
      std::lock_guard lk(mu);
      events.push_back(ev);
    }
    cv.notify_one();
  }
  dsv3::serve::TokenEvent pop() {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return !events.empty(); });
    auto ev = std::move(events.front());
    events.pop_front();
    return ev;
  }
};

void run_chat(const ChatArgs& a) {
  using namespace dsv3;
  serve::validate_sampling({a.temperature, a.top_k, a.top_p, a.seed});
  const tok::Tokenizer tk = a.engine.load_tokenizer();
  auto m = a.engine.load_model();
  serve::Engine engine(*m, a.engine.engine_options());
  const bool tty = isatty(STDIN_FILENO);
  std::vector<tok::ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system, {}});
  std::fprintf(stderr, "dsv3 chat: seed %llu; /reset clears the history, /exit quits\n",
               (unsigned long long)a.seed);
  std::string line;
  for (uint64_t turn = 0;; ++turn) {
    if (tty) std::fputs("> ", stdout), std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      history.resize(a.system.empty() ? 0 : 1);
      std::puts("(history cleared)");
      continue;
    }
    if (line.empty()) continue;
    history.push_back({"user", line, {}});
    serve::RequestParams p;
    p.prompt = tk.encode(tk.apply_chat_template(history, true), false);
    p.sampling = {a.temperature, a.top_k, a.top_p, a.seed + turn};
    p.logprobs = false;  // the chat shows text only
    p.max_tokens = std::min<int64_t>(a.max_tokens, engine.max_context() - int64_t(p.prompt.size()));
    if (p.max_tokens < 1) {
      std::fprintf(stderr, "dsv3 chat: the history fills the context (%lld tokens); /reset\n",
                   (long long)engine.max_context());
      history.pop_back();
      continue;
    }
    if (auto eos = tk.eos_id()) p.stop_tokens.push_back(*eos);
    Reply reply;
    serve::RequestStats st;
    engine.submit(
        std::move(p), [&reply](const serve::TokenEvent& ev) { reply.push(ev); }, &st);
    serve::TextStream ts(tk, {});
    for (;;) {
      const serve::TokenEvent ev = reply.pop();
      std::string out = ev.token >= 0 ? ts.push(ev.token) : "";
      if (ev.finish != serve::FinishReason::None) out += ts.finish();
      std::fwrite(out.data(), 1, out.size(), stdout);
      std::fflush(stdout);
      if (ev.finish == serve::FinishReason::Error) DSV3_FAIL("generation failed: {}", ev.error);
      if (ev.finish != serve::FinishReason::None) break;
    }
    std::printf("\n");
    std::fprintf(
        stderr, "[%lld tokens, %lld cached prompt tokens, %.1f tok/s]\n",
        (long long)st.completion_tokens, (long long)st.cached_prompt_tokens,
        st.total_s > st.ttft_s ? (st.completion_tokens - 1) / (st.total_s - st.ttft_s) : 0.0);
    history.push_back({"assistant", ts.text(), {}});
  }
}

void setup(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  auto* sub = app.add_subcommand("chat", "Interactive chat in the terminal");
  a->engine.add(sub);
  sub->add_option("--system", a->system, "system prompt");
  sub->add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  dsv3::cli::add_int_option(sub, "--top-k", a->top_k, 0, INT32_MAX, "0 = off (default 0)");
  sub->add_option("--top-p", a->top_p, "1 = off")->capture_default_str();
  sub->add_option("--seed", a->seed, "sampling seed (turn i uses seed + i)")->capture_default_str();
  dsv3::cli::add_int_option(sub, "-n,--max-tokens", a->max_tokens, 1, INT32_MAX,
                            "tokens per reply at most (default 512)");
  sub->callback([a] { run_chat(*a); });
}
}  // namespace
DSV3_COMMAND(setup);
