// The HTTP server: routes, authentication, error mapping, and the run of one request (submit to
// the engine, fold its token events through TextStream, answer as JSON or server-sent events).
#include "serve/http_server.hpp"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <set>

#include "core/error.hpp"
#include "core/log.hpp"
#include "serve/client_socket.hpp"
#include "serve/text_stream.hpp"

namespace dsv3::serve {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// One request in flight: the engine's events arrive on the engine thread (on_event, never
// blocking); one HTTP thread folds them into text, logprobs and the finish reason.
struct Generation {
  Generation(Engine& e, const tok::Tokenizer& tk, CompletionRequest r, ResponseHeader h)
      : engine(e), tk(tk), req(std::move(r)), hdr(std::move(h)), ts(tk, req.stop) {}

  Engine& engine;
  const tok::Tokenizer& tk;
  const CompletionRequest req;
  const ResponseHeader hdr;
  RequestId id = 0;
  int64_t prompt_tokens = 0;

  // Written by the engine thread under mu.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<TokenEvent> events;
  bool engine_done = false;
  RequestStats stats;  // filled by the engine before its final event

  // The consumer's state.
  TextStream ts;
  int64_t completion_tokens = 0;
  bool done = false;
  std::string finish_reason, error;
  size_t text_offset = 0;

  void on_event(const TokenEvent& ev) {
    {
      std::lock_guard lk(mu);
      events.push_back(ev);
      if (ev.finish != FinishReason::None) engine_done = true;
    }
    cv.notify_one();
  }

  struct Step {
    std::string text;
    std::vector<TokenLogprob> logprobs;
  };

  // Waits up to `wait` for events and folds them; `done` is set with the last one.
  Step next(std::chrono::milliseconds wait) {
    std::deque<TokenEvent> got;
    {
      std::unique_lock lk(mu);
      cv.wait_for(lk, wait, [&] { return !events.empty(); });
      got.swap(events);
    }
    Step s;
    for (const TokenEvent& ev : got) fold(ev, s);
    return s;
  }

  void fold(const TokenEvent& ev, Step& s) {
    if (done) return;
    if (ev.token >= 0 && !ts.stopped()) {
      ++completion_tokens;
      s.text += ts.push(ev.token);
      if (req.logprobs) {
        TokenLogprob t{tk.decode(std::vector<int32_t>{ev.token}), ev.logprob, {}};
        for (const auto& [id2, lp] : ev.top)
          t.top.emplace_back(tk.decode(std::vector<int32_t>{id2}), lp);
        s.logprobs.push_back(std::move(t));
      }
      // A stop string: the reply is complete; the engine's Cancelled event ends it.
      if (ts.stopped()) engine.cancel(id);
    }
    if (ev.finish == FinishReason::None) return;
    done = true;
    if (ev.finish == FinishReason::Error) {
      error = ev.error.empty() ? "generation failed" : ev.error;
      return;
    }
    s.text += ts.finish();
    finish_reason = ts.stopped() ? "stop" : finish_reason_name(ev.finish);
  }

  Usage usage() {
    std::lock_guard lk(mu);
    return {prompt_tokens, completion_tokens, stats.cached_prompt_tokens};
  }
};

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(json_dump(e.to_json()) + "\n", "application/json");
}

}  // namespace

struct HttpServer::Impl {
  Impl(Engine& e, const tok::Tokenizer& t, ServerOptions o)
      : engine(e), tk(t), opt(std::move(o)), created(std::time(nullptr)) {}

  Engine& engine;
  const tok::Tokenizer& tk;
  const ServerOptions opt;
  const int64_t created;
  httplib::Server svr;
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards active and counters
  std::set<std::shared_ptr<Generation>> active;
  HttpCounters counters;

  void setup_routes();
  bool authorized(const httplib::Request& req) const;
  int64_t context() const {
    const int64_t ctx = engine.max_context();
    return opt.max_prompt_tokens > 0 ? std::min(opt.max_prompt_tokens + 1, ctx) : ctx;
  }
  std::vector<int32_t> prompt_of(const CompletionRequest& r) const;
  std::shared_ptr<Generation> start(CompletionRequest r);
  void finish(const std::shared_ptr<Generation>& g);
  void complete(const httplib::Request& req, httplib::Response& res, bool chat);
  void respond_whole(const std::shared_ptr<Generation>& g, const httplib::Request& req,
                     httplib::Response& res);
  void respond_stream(const std::shared_ptr<Generation>& g, httplib::Response& res);
};

bool HttpServer::Impl::authorized(const httplib::Request& req) const {
  if (opt.api_key.empty()) return true;
  return constant_time_equal(req.get_header_value("Authorization"), "Bearer " + opt.api_key);
}

std::vector<int32_t> HttpServer::Impl::prompt_of(const CompletionRequest& r) const {
  std::vector<int32_t> ids;
  const char* param = r.chat ? "messages" : "prompt";
  if (r.chat) {
    if (!tok::is_deepseek_v3_chat_template(tk.config().chat_template))
      throw ApiError(400,
                     "this model's tokenizer_config.json has no supported chat template "
                     "(DeepSeek-V3's): use /v1/completions");
    ids = tk.encode(tk.apply_chat_template(r.messages, /*add_generation_prompt=*/true), false);
  } else if (!r.prompt_ids.empty()) {
    ids = r.prompt_ids;
  } else {
    ids = tk.encode(r.prompt, /*add_special_tokens=*/true);
  }
  if (ids.empty()) throw ApiError(400, "the prompt encodes to no tokens", param);
  const int64_t ctx = context();
  if (int64_t(ids.size()) >= ctx)
    throw ApiError(400,
                   fmt::format("the prompt is {} tokens; this server takes at most {} prompt "
                               "tokens (context {})",
                               ids.size(), ctx - 1, engine.max_context()),
                   param, "context_length_exceeded");
  if (r.max_tokens && int64_t(ids.size()) + *r.max_tokens > engine.max_context())
    throw ApiError(400,
                   fmt::format("this model's maximum context length is {} tokens; the request "
                               "asks for {} ({} in the prompt, {} for the completion)",
                               engine.max_context(), int64_t(ids.size()) + *r.max_tokens,
                               ids.size(), *r.max_tokens),
                   r.max_tokens_param, "context_length_exceeded");
  return ids;
}

std::shared_ptr<Generation> HttpServer::Impl::start(CompletionRequest r) {
  if (stopping) throw ApiError(503, "the server is shutting down", "", "shutting_down");
  ResponseHeader h{new_response_id(r.chat), int64_t(std::time(nullptr)),
                   r.model.empty() ? opt.model_id : r.model};
  std::vector<int32_t> prompt = prompt_of(r);
  RequestParams p;
  p.sampling = r.sampling;
  if (!r.seeded) p.sampling.seed = std::random_device{}() * 0x100000001ull;
  p.max_tokens = r.max_tokens.value_or(
      std::min<int64_t>(opt.limits.max_tokens, engine.max_context() - int64_t(prompt.size())));
  if (!r.ignore_eos)
    if (auto eos = tk.eos_id()) p.stop_tokens.push_back(*eos);
  p.logprobs = r.logprobs;  // else no V-way softmax per token
  p.top_logprobs = r.logprobs ? r.top_logprobs : 0;
  p.prompt = std::move(prompt);
  auto g = std::make_shared<Generation>(engine, tk, std::move(r), std::move(h));
  g->prompt_tokens = int64_t(p.prompt.size());
  {
    std::lock_guard lk(mu);
    if (counters.in_flight >= opt.max_requests)
      throw ApiError(503,
                     fmt::format("the server is busy ({} requests in flight); retry later",
                                 counters.in_flight),
                     "", "server_busy");
    ++counters.in_flight;
    active.insert(g);
  }
  try {
    // The callback keeps the generation alive until the engine's last event.
    g->id = engine.submit(
        std::move(p), [g](const TokenEvent& ev) { g->on_event(ev); }, &g->stats);
  } catch (const Error& e) {
    finish(g);
    throw ApiError(400, e.what(), g->req.chat ? "messages" : "prompt");
  }
  if (stopping) engine.cancel(g->id);
  return g;
}

void HttpServer::Impl::finish(const std::shared_ptr<Generation>& g) {
  std::lock_guard lk(mu);
  if (active.erase(g)) --counters.in_flight;
}

void HttpServer::Impl::respond_whole(const std::shared_ptr<Generation>& g,
                                     const httplib::Request& req, httplib::Response& res) {
  // The connection is watched while the answer is generated: a client that left cancels it.
  const int fd = find_client_socket(req.remote_addr, req.remote_port, req.local_port);
  bool abandoned = false;
  std::string text;
  std::vector<TokenLogprob> lps;
  while (!g->done) {
    if (!abandoned && client_gone(fd)) {
      abandoned = true;
      engine.cancel(g->id);
      std::lock_guard lk(mu);
      ++counters.requests_abandoned;
    }
    auto s = g->next(std::chrono::milliseconds(100));
    text += s.text;
    for (auto& t : s.logprobs) lps.push_back(std::move(t));
  }
  finish(g);
  if (abandoned) {
    // Nobody reads it; 499 as nginx logs a client that closed the connection.
    send_error(res, ApiError(499, "the client closed the connection", "", "client_closed"));
    return;
  }
  if (!g->error.empty()) throw ApiError(500, g->error, "", "generation_error");
  if (g->finish_reason == "cancelled")
    throw ApiError(503, "the request was cancelled: the server is shutting down", "",
                   "shutting_down");
  res.set_content(json_dump(completion_response(g->hdr, g->req.chat, text, g->finish_reason,
                                                g->req.logprobs ? &lps : nullptr, g->usage())) +
                      "\n",
                  "application/json");
}

namespace {
// What one stream keeps between calls of its content provider.
struct StreamState {
  bool first = true;
  Clock::time_point last_write = Clock::now();
};

// One call of the content provider: writes what the engine produced since the last call.
// Returns false when the client is gone (the write failed).
bool stream_step(Generation& g, StreamState& st, httplib::DataSink& sink) {
  auto write = [&](const std::string& s) {
    st.last_write = Clock::now();
    return sink.write(s.data(), s.size());
  };
  const bool chat = g.req.chat;
  if (st.first) {
    st.first = false;
    if (chat && !write(sse_event(completion_chunk(g.hdr, true, "", true, "", nullptr, 0))))
      return false;
  }
  auto s = g.next(std::chrono::milliseconds(250));
  if (!s.text.empty() || !s.logprobs.empty()) {
    if (!write(sse_event(completion_chunk(g.hdr, chat, s.text, false, "",
                                          g.req.logprobs ? &s.logprobs : nullptr, g.text_offset))))
      return false;
    g.text_offset += s.text.size();
  } else if (!g.done && Clock::now() - st.last_write > std::chrono::seconds(2)) {
    // An SSE comment: clients ignore it; a client that left makes the write fail.
    if (!write(": keep-alive\n\n")) return false;
  }
  if (!g.done) return true;
  std::string tail;
  if (!g.error.empty() || g.finish_reason == "cancelled") {
    const ApiError e = g.error.empty()
                           ? ApiError(503, "the server is shutting down", "", "shutting_down")
                           : ApiError(500, g.error, "", "generation_error");
    tail = sse_event(e.to_json());
  } else {
    tail = sse_event(
        completion_chunk(g.hdr, chat, "", false, g.finish_reason, nullptr, g.text_offset));
    if (g.req.include_usage) tail += sse_event(usage_chunk(g.hdr, chat, g.usage()));
  }
  tail += kSseDone;
  if (!write(tail)) return false;
  sink.done();
  return true;
}
}  // namespace

void HttpServer::Impl::respond_stream(const std::shared_ptr<Generation>& g,
                                      httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto st = std::make_shared<StreamState>();
  res.set_chunked_content_provider(
      "text/event-stream",
      [g, st](size_t, httplib::DataSink& sink) {
        // httplib does not catch exceptions of a provider: one must not end the process.
        try {
          return stream_step(*g, *st, sink);
        } catch (const std::exception& e) {
          log_message(LogLevel::Error, std::string("dsv3 serve: stream failed: ") + e.what());
          return false;
        }
      },
      [this, g](bool) {
        // Ends the request however the stream ended; a client that left cancels it.
        if (!g->done) {
          engine.cancel(g->id);
          std::lock_guard lk(mu);
          ++counters.streams_cancelled;
        }
        finish(g);
      });
}

void HttpServer::Impl::complete(const httplib::Request& req, httplib::Response& res, bool chat) {
  const json body = parse_body(req.body);
  CompletionRequest r =
      chat ? parse_chat_request(body, opt.limits) : parse_completion_request(body, opt.limits);
  const bool stream = r.stream;
  auto g = start(std::move(r));
  if (stream)
    respond_stream(g, res);
  else
    respond_whole(g, req, res);
}

void HttpServer::Impl::setup_routes() {
  auto guarded = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, std::string("internal error: ") + e.what()));
      }
    };
  };
  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const bool protected_path = req.path.rfind("/v1/", 0) == 0 || req.path == "/metrics";
    if (protected_path && !authorized(req)) {
      send_error(res, ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               "", "invalid_api_key", "invalid_request_error"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.Post("/v1/chat/completions",
           guarded([this](const auto& q, auto& s) { complete(q, s, true); }));
  svr.Post("/v1/completions", guarded([this](const auto& q, auto& s) { complete(q, s, false); }));
  svr.Get("/v1/models", guarded([this](const auto&, auto& res) {
            json m = {{"id", opt.model_id},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "dsv3"},
                      {"max_model_len", engine.max_context()}};
            res.set_content(json_dump({{"object", "list"}, {"data", json::array({m})}}) + "\n",
                            "application/json");
          }));
  svr.Get("/health", guarded([this](const auto&, auto& res) {
            if (stopping) throw ApiError(503, "shutting down", "", "shutting_down");
            res.set_content("{\"status\":\"ok\"}\n", "application/json");
          }));
  svr.Get("/metrics", guarded([this](const auto&, auto& res) {
            HttpCounters c;
            {
              std::lock_guard lk(mu);
              c = counters;
            }
            res.set_content(prometheus_metrics(engine.metrics(), engine.blocks_referenced(), c),
                            "text/plain; version=0.0.4");
          }));
  svr.Get("/", [](const auto&, auto& res) {
    res.set_content(kChatPageHtml, "text/html; charset=utf-8");
  });
  svr.set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (res.status == 413)
          send_error(res, ApiError(413, "the request body is too large", "", "body_too_large"));
        else if (res.status == 404)
          send_error(res, ApiError(404, fmt::format("no route {} {}", req.method, req.path), "",
                                   "not_found"));
        else
          send_error(res, ApiError(res.status, fmt::format("HTTP error {}", res.status)));
        return httplib::Server::HandlerResponse::Handled;
      }));
  svr.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, ApiError(500, "internal error: " + what));
      });
  svr.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    std::lock_guard lk(mu);
    if (res.status < 400)
      ++counters.requests_ok;
    else if (res.status < 500)
      ++counters.requests_client_error;
    else
      ++counters.requests_server_error;
  });
}

HttpServer::HttpServer(Engine& engine, const tok::Tokenizer& tk, ServerOptions opt)
    : impl_(std::make_unique<Impl>(engine, tk, std::move(opt))) {
  const int threads = std::max(2, impl_->opt.http_threads);
  impl_->svr.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  impl_->svr.set_payload_max_length(impl_->opt.max_body_bytes);
  impl_->svr.set_read_timeout(30);
  impl_->svr.set_write_timeout(30);
  // An idle keep-alive connection holds a worker until this ends, and so delays shutdown.
  impl_->svr.set_keep_alive_timeout(2);
  impl_->setup_routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const auto& o = impl_->opt;
  if (o.port == 0) {
    const int p = impl_->svr.bind_to_any_port(o.host);
    DSV3_CHECK(p > 0, "cannot bind to {} (any port)", o.host);
    return p;
  }
  DSV3_CHECK(impl_->svr.bind_to_port(o.host, o.port),
             "cannot bind to {}:{} (in use, or not an address of this machine?)", o.host, o.port);
  return o.port;
}

void HttpServer::run() {
  impl_->svr.listen_after_bind();
}

void HttpServer::stop() {
  impl_->stopping = true;
  std::vector<RequestId> ids;
  {
    std::lock_guard lk(impl_->mu);
    for (const auto& g : impl_->active) ids.push_back(g->id);
  }
  for (RequestId id : ids) impl_->engine.cancel(id);
  impl_->svr.stop();
}

std::string prometheus_metrics(const EngineMetrics& m, int64_t blocks_referenced,
                               const HttpCounters& h) {
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    out += fmt::format("# HELP dsv3_{0} {1}\n# TYPE dsv3_{0} {2}\ndsv3_{0} {3}\n", name, help, type,
                       v);
  };
  metric("requests_total", "counter", "Generation requests submitted to the engine.",
         double(m.requests_total));
  metric("requests_running", "gauge", "Sequences in the running batch.",
         double(m.requests_running));
  metric("requests_waiting", "gauge", "Requests queued for the running batch.",
         double(m.requests_waiting));
  metric("prompt_tokens_total", "counter", "Prompt tokens processed.",
         double(m.prompt_tokens_total));
  metric("generation_tokens_total", "counter", "Tokens generated.",
         double(m.generation_tokens_total));
  metric("decode_tokens_per_second", "gauge", "Recent decode throughput (tokens/s).",
         m.decode_tokens_per_s);
  metric("kv_blocks_used", "gauge", "Latent KV cache blocks in use (cached prefixes included).",
         double(m.kv_blocks_used));
  metric("kv_blocks_referenced", "gauge", "KV blocks referenced by sequences (0 when idle).",
         double(blocks_referenced));
  metric("kv_blocks_total", "gauge", "Latent KV cache blocks.", double(m.kv_blocks_total));
  metric("prefix_cache_queried_tokens_total", "counter",
         "Prompt tokens looked up in the prefix cache.", double(m.prefix_cache_queried_tokens));
  metric("prefix_cache_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache.",
         double(m.prefix_cache_hit_tokens));
  metric("spec_drafted_tokens_total", "counter", "MTP draft tokens proposed.",
         double(m.spec_drafted));
  metric("spec_accepted_tokens_total", "counter", "MTP draft tokens accepted.",
         double(m.spec_accepted));
  metric("spec_acceptance_rate", "gauge", "Accepted / drafted MTP tokens.",
         m.spec_drafted > 0 ? double(m.spec_accepted) / double(m.spec_drafted) : 0.0);
  metric("preemptions_total", "counter", "Sequences preempted for KV cache space.",
         double(m.preemptions));
  metric("engine_steps_total", "counter", "Engine forward steps.", double(m.steps));
  metric("http_requests_in_flight", "gauge", "Generation requests being served.",
         double(h.in_flight));
  out +=
      "# HELP dsv3_http_responses_total HTTP responses by class.\n"
      "# TYPE dsv3_http_responses_total counter\n";
  out += fmt::format("dsv3_http_responses_total{{class=\"2xx\"}} {}\n", h.requests_ok);
  out += fmt::format("dsv3_http_responses_total{{class=\"4xx\"}} {}\n", h.requests_client_error);
  out += fmt::format("dsv3_http_responses_total{{class=\"5xx\"}} {}\n", h.requests_server_error);
  metric("http_streams_cancelled_total", "counter",
         "Streams whose client disconnected before the end (request cancelled).",
         double(h.streams_cancelled));
  metric("http_requests_abandoned_total", "counter",
         "Non-streamed requests whose client disconnected before the answer (request cancelled).",
         double(h.requests_abandoned));
  return out;
}

}  // namespace dsv3::serve
