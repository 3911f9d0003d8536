// The HTTP server of `dsv3 serve` in process (issue 16), over the real engine on the tiny test
// model (tests/serve/make_tiny_model.sh): error mapping on the wire (status + OpenAI error
// object), the server-sent-event stream format, a client that disconnects mid-stream (or before
// a whole response) has its request cancelled and its KV blocks freed, and stop() ends a running
// stream.
#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "serve/http_server.hpp"

using namespace dsv3;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  fs::path dir;
  std::unique_ptr<model::Model> model;
  std::optional<tok::Tokenizer> tk;
  std::unique_ptr<serve::Engine> engine;
  std::unique_ptr<serve::HttpServer> server;
  std::thread thread;
  int port = 0;
};
Fixture* fx = nullptr;
std::string skip_reason;

class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx = new Fixture;
    fx->dir = fs::temp_directory_path() / ("dsv3-http-test-" + std::to_string(getpid()));
    const std::string cmd = std::string(DSV3_SOURCE_DIR) + "/tests/serve/make_tiny_model.sh " +
                            DSV3_BIN + " " + DSV3_SOURCE_DIR + " " + fx->dir.string() +
                            " >/dev/null 2>&1";
    const int rc = std::system(cmd.c_str());
    if (WEXITSTATUS(rc) == 77) {
      skip_reason = "no tokenizer: run scripts/setup.sh";
      return;
    }
    ASSERT_EQ(rc, 0) << cmd;
    model::LoadOptions lo;
    lo.load_mtp = false;
    fx->model = model::Model::load(fx->dir.string(), lo);
    fx->tk = tok::Tokenizer::load(fx->dir.string());
    serve::EngineOptions eo;
    eo.kv_cache_mb = 4;
    fx->engine = std::make_unique<serve::Engine>(*fx->model, eo);
    serve::ServerOptions so;
    so.port = 0;
    so.max_body_bytes = 64 << 10;
    so.http_threads = 8;
    fx->server = std::make_unique<serve::HttpServer>(*fx->engine, *fx->tk, so);
    fx->port = fx->server->bind();
    fx->thread = std::thread([] { fx->server->run(); });
  }
  static void TearDownTestSuite() {
    if (fx->server) {
      fx->server->stop();
      fx->thread.join();
    }
    fx->server.reset();
    fx->engine.reset();
    fx->model.reset();
    if (!fx->dir.empty()) fs::remove_all(fx->dir);
    delete fx;
  }
  void SetUp() override {
    if (!skip_reason.empty()) GTEST_SKIP() << skip_reason;
  }
  httplib::Client client() { return httplib::Client("127.0.0.1", fx->port); }
};

// The status and the error object of a response.
void expect_error(const httplib::Result& r, int status, const std::string& code,
                  const std::string& param = {}) {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_TRUE(j["error"]["type"].is_string());
  if (!code.empty()) {
    EXPECT_EQ(j["error"]["code"], code) << r->body;
  }
  if (!param.empty()) {
    EXPECT_EQ(j["error"]["param"], param) << r->body;
  }
}

// Waits until no request runs and no block is referenced.
bool wait_idle() {
  for (int i = 0; i < 200; ++i) {
    const auto m = fx->engine->metrics();
    if (m.requests_running == 0 && m.requests_waiting == 0 && fx->engine->blocks_referenced() == 0)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// The data payloads of a server-sent-event stream.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event";
    if (end == std::string::npos) break;
    const std::string ev = body.substr(pos, end - pos);
    if (ev.rfind("data: ", 0) == 0) out.push_back(ev.substr(6));
    pos = end + 2;
  }
  return out;
}

}  // namespace

TEST_F(HttpServerTest, ErrorsOnTheWire) {
  auto c = client();
  expect_error(c.Post("/v1/chat/completions", "{oops", "application/json"), 400, "invalid_json");
  expect_error(c.Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}],
      "temperature": "hot"})",
                      "application/json"),
               400, "invalid_type", "temperature");
  expect_error(c.Post("/v1/completions", R"({"prompt": "x", "n": 3})", "application/json"), 400,
               "unsupported_parameter", "n");
  expect_error(c.Get("/v1/nothing"), 404, "not_found");
  expect_error(c.Get("/v1/chat/completions"), 404, "not_found");
  expect_error(c.Post("/v1/completions", std::string(100 << 10, 'x'), "application/json"), 413,
               "body_too_large");
  // Prompts over the context (256) and prompt + max_tokens over it.
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "word ";
  expect_error(c.Post("/v1/completions", json{{"prompt", long_prompt}}.dump(), "application/json"),
               400, "context_length_exceeded", "prompt");
  expect_error(c.Post("/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 255}}.dump(),
                      "application/json"),
               400, "context_length_exceeded", "max_tokens");
  expect_error(c.Post("/v1/completions", json{{"prompt", json::array({999999999})}}.dump(),
                      "application/json"),
               400, "", "prompt");
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_TRUE(wait_idle());
}

TEST_F(HttpServerTest, StreamFormatAndSameTextAsWhole) {
  auto c = client();
  const json body = {{"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                     {"temperature", 0},
                     {"max_tokens", 12},
                     {"ignore_eos", true}};
  auto whole = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const json w = json::parse(whole->body);
  EXPECT_EQ(w["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(w["usage"]["completion_tokens"], 12);

  json sb = body;
  sb["stream"] = true;
  sb["stream_options"] = {{"include_usage", true}};
  auto st = c.Post("/v1/chat/completions", sb.dump(), "application/json");
  ASSERT_TRUE(st);
  ASSERT_EQ(st->status, 200);
  EXPECT_EQ(st->get_header_value("Content-Type"), "text/event-stream");
  const auto events = sse_data(st->body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json first = json::parse(events.front());
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string text, finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_EQ(e["id"], first["id"]);
    const auto& ch = e["choices"][0];
    if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 12);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(text, w["choices"][0]["message"]["content"]);
  EXPECT_TRUE(wait_idle());
}

TEST_F(HttpServerTest, DisconnectMidStreamFreesTheSequence) {
  const auto before = fx->engine->metrics();
  for (int round = 0; round < 3; ++round) {
    auto c = client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    req.body =
        json{{"prompt", "Tell me"}, {"max_tokens", 200}, {"ignore_eos", true}, {"stream", true}}
            .dump();
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    auto r = c.send(req);  // ends with an error: the receiver gave up
    EXPECT_GE(chunks, 2);
  }
  EXPECT_TRUE(wait_idle()) << "blocks referenced: " << fx->engine->blocks_referenced();
  const auto after = fx->engine->metrics();
  // Cancelled early: far fewer than 3 x 200 tokens were generated.
  EXPECT_LT(after.generation_tokens_total - before.generation_tokens_total, 3 * 200);
  auto m = client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("dsv3_http_streams_cancelled_total 3"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("dsv3_kv_blocks_referenced 0"), std::string::npos);
}

// A client that sends a non-streamed request and closes the connection without reading: the
// server notices while generating and cancels (the answer would otherwise run to max_tokens).
TEST_F(HttpServerTest, DisconnectBeforeAWholeResponseCancelsIt) {
  const auto before = fx->engine->metrics();
  const int64_t max_tokens = 240, rounds = 3;
  const std::string body =
      json{{"prompt", "Tell me"}, {"max_tokens", max_tokens}, {"ignore_eos", true}}.dump();
  const std::string request =
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  for (int round = 0; round < rounds; ++round) {
    const int s = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(s, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(fx->port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(send(s, request.data(), request.size(), 0), ssize_t(request.size()));
    close(s);
  }
  // The server reads each request after its client left: wait for it to see all three.
  std::string metrics;
  for (int i = 0; i < 200; ++i) {
    auto m = client().Get("/metrics");
    ASSERT_TRUE(m);
    metrics = m->body;
    if (metrics.find("dsv3_http_requests_abandoned_total 3") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(metrics.find("dsv3_http_requests_abandoned_total 3"), std::string::npos) << metrics;
  EXPECT_TRUE(wait_idle()) << "blocks referenced: " << fx->engine->blocks_referenced();
  const auto after = fx->engine->metrics();
  EXPECT_LT(after.generation_tokens_total - before.generation_tokens_total, rounds * max_tokens);
  auto m = client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("dsv3_kv_blocks_referenced 0"), std::string::npos);
}
