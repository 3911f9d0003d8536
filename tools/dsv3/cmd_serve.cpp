// `dsv3 serve --model DIR [--host 127.0.0.1] [--port 8080] [--api-key KEY] [engine flags]`: the
// OpenAI-compatible HTTP server (serve/http_server.hpp) over the batching engine. SIGINT/SIGTERM
// stop it gracefully: running requests are cancelled, connections closed, then it exits 0.
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "command.hpp"
#include "serve/http_server.hpp"
#include "serve_common.hpp"

namespace {
struct ServeArgs {
  dsv3::cli::EngineFlags engine;
  dsv3::serve::ServerOptions server;
  int64_t max_body_kb = 4096;
};

void run_serve(ServeArgs& a) {
  using namespace dsv3;
  // Signals go to one thread (sigwait) rather than interrupting any; the threads made below
  // inherit the mask. A closed connection must not kill the process with SIGPIPE.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  if (a.server.api_key.empty())
    if (const char* k = std::getenv("DSV3_API_KEY")) a.server.api_key = k;
  a.server.max_body_bytes = size_t(a.max_body_kb) * 1024;
  if (a.server.model_id.empty())
    a.server.model_id = std::filesystem::path(a.engine.model).filename().string();
  if (a.server.model_id.empty()) a.server.model_id = "dsv3";
  const tok::Tokenizer tk = a.engine.load_tokenizer();
  const serve::EngineOptions eo = a.engine.engine_options();
  auto m = a.engine.load_model();
  serve::Engine engine(*m, eo);
  serve::HttpServer server(engine, tk, a.server);
  const int port = server.bind();
  if (a.server.host != "127.0.0.1" && a.server.host != "localhost" && a.server.host != "::1" &&
      a.server.api_key.empty())
    std::fprintf(stderr, "dsv3 serve: warning: listening on %s without --api-key\n",
                 a.server.host.c_str());
  std::printf("dsv3 serve: listening on http://%s:%d (model %s, context %lld, speculative %s)\n",
              a.server.host.c_str(), port, a.server.model_id.c_str(),
              (long long)engine.max_context(), a.engine.speculative.c_str());
  std::fflush(stdout);
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig != SIGUSR1) {
      std::fprintf(stderr, "dsv3 serve: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      server.stop();
    }
  });
  server.run();
  pthread_kill(waiter.native_handle(), SIGUSR1);  // run() may have ended without a signal
  waiter.join();
  std::printf("dsv3 serve: stopped\n");
}

void setup(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* sub = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat page at /)");
  a->engine.add(sub);
  a->server.model_id.clear();
  sub->add_option("--host", a->server.host, "address to listen on")->capture_default_str();
  dsv3::cli::add_int_option(sub, "--port", a->server.port, 0, 65535,
                            "port (default 8080; 0: any free port, printed)");
  sub->add_option("--api-key", a->server.api_key,
                  "require 'Authorization: Bearer KEY' on /v1/* and /metrics (or $DSV3_API_KEY)");
  sub->add_option("--model-name", a->server.model_id,
                  "model id in /v1/models and responses (default: the model directory's name)");
  dsv3::cli::add_int_option(sub, "--max-tokens", a->server.limits.max_tokens, 1, INT32_MAX,
                            "most new tokens a request may ask for (default 4096)");
  dsv3::cli::add_int_option(sub, "--max-prompt-tokens", a->server.max_prompt_tokens, 0, INT32_MAX,
                            "most prompt tokens (default 0: the context less one)");
  dsv3::cli::add_int_option(sub, "--max-body-kb", a->max_body_kb, 1, 1 << 20,
                            "largest request body in KiB (default 4096)");
  dsv3::cli::add_int_option(sub, "--http-threads", a->server.http_threads, 2, 4096,
                            "connections served at once (default 64)");
  dsv3::cli::add_int_option(sub, "--max-requests", a->server.max_requests, 1, 1 << 20,
                            "generation requests in flight; more get 503 (default 256)");
  sub->callback([a] { run_serve(*a); });
}
}  // namespace
DSV3_COMMAND(setup);
