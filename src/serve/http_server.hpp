// `dsv3 serve`'s HTTP front end on cpp-httplib (Debian's libcpp-httplib-dev): the OpenAI routes
// (/v1/chat/completions, /v1/completions, /v1/models), /health, Prometheus /metrics and the chat
// page at /, over one Engine. A request becomes token ids (the chat template of the model's
// tokenizer_config.json), is submitted to the engine and its tokens come back through
// TextStream (stop strings) as one JSON response or as server-sent events.
//
// Robustness: bodies, prompts and max_tokens are bounded; every bad request gets OpenAI's JSON
// error with its status; a client that goes away mid-stream has its request cancelled (the engine
// frees its sequence and blocks); stop() cancels what runs and ends run().
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "serve/engine.hpp"
#include "serve/openai_api.hpp"
#include "tokenizer/tokenizer.hpp"

namespace dsv3::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (see HttpServer::bind)
  std::string api_key;  // non-empty: /v1/* and /metrics need "Authorization: Bearer <key>"
  std::string model_id = "dsv3";  // the name /v1/models reports
  size_t max_body_bytes = size_t(4) << 20;
  int64_t max_prompt_tokens = 0;  // 0: the engine's context less one
  ApiLimits limits;
  int http_threads = 64;       // connections served at once (each stream holds one)
  int64_t max_requests = 256;  // generation requests in flight; more get 503
};

// Counters of the HTTP layer, for /metrics.
struct HttpCounters {
  int64_t requests_ok = 0, requests_client_error = 0, requests_server_error = 0;
  int64_t streams_cancelled = 0;   // clients that disconnected mid-stream
  int64_t requests_abandoned = 0;  // clients that disconnected before a whole response
  int64_t in_flight = 0;
};

std::string prometheus_metrics(const EngineMetrics& m, int64_t blocks_referenced,
                               const HttpCounters& h);

class HttpServer {
 public:
  // `engine` and `tk` must outlive the server.
  HttpServer(Engine& engine, const tok::Tokenizer& tk, ServerOptions opt);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  // Binds host:port; returns the port (the chosen one for port 0). Throws dsv3::Error.
  int bind();
  // Serves until stop(); call after bind().
  void run();
  // Thread-safe: cancels the running requests and makes run() return.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The chat page served at / (web/index.html, embedded at build time).
extern const char* const kChatPageHtml;

}  // namespace dsv3::serve
