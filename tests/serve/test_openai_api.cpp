// The OpenAI request parsing of `dsv3 serve` (issue 16): well-formed chat and completion requests
// become the right CompletionRequest; malformed JSON, wrong types, out-of-range values and
// unsupported features become ApiError with OpenAI's error object, the HTTP status and the
// offending field; the response and stream-chunk JSON have OpenAI's shape.
#include <gtest/gtest.h>

#include "serve/openai_api.hpp"

using namespace dsv3::serve;
using nlohmann::json;

namespace {

const ApiLimits kLim;

CompletionRequest chat(const std::string& body) {
  return parse_chat_request(parse_body(body), kLim);
}
CompletionRequest completion(const std::string& body) {
  return parse_completion_request(parse_body(body), kLim);
}

// The body must be refused with `status` naming `param`.
template <typename F>
void expect_refused(F parse, const std::string& body, int status, const std::string& param,
                    const std::string& needle = {}) {
  try {
    parse(body);
    ADD_FAILURE() << "accepted: " << body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), status) << body << ": " << e.what();
    EXPECT_EQ(e.param(), param) << body << ": " << e.what();
    if (!needle.empty()) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    const json j = e.to_json();
    ASSERT_TRUE(j.contains("error"));
    for (const char* k : {"message", "type", "param", "code"})
      EXPECT_TRUE(j["error"].contains(k)) << k << " missing in " << j.dump();
    EXPECT_EQ(j["error"]["message"], e.what());
  }
}

const std::string kMsgs = R"("messages": [{"role": "user", "content": "hi"}])";

}  // namespace

TEST(OpenAiApi, ChatRequestFields) {
  const auto r = chat(R"({"model": "m", "messages": [{"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": "ok"}, {"role": "developer", "content": "d"}],
      "temperature": 0, "top_p": 0.5, "top_k": 7, "seed": -3, "max_completion_tokens": 9,
      "max_tokens": 100, "stop": ["x", "yz"], "stream": true,
      "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3,
      "n": 1, "presence_penalty": 0, "unknown_field": {"anything": [1, 2]}})");
  EXPECT_TRUE(r.chat);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].role, "user");
  EXPECT_EQ(*r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[3].role, "system");
  EXPECT_EQ(r.sampling.temperature, 0.f);
  EXPECT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_EQ(r.sampling.seed, uint64_t(int64_t(-3)));
  EXPECT_TRUE(r.seeded);
  EXPECT_EQ(r.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
}

TEST(OpenAiApi, ChatDefaultsAndNulls) {
  const auto r = chat("{" + kMsgs + R"(, "temperature": null, "stop": null, "seed": null})");
  EXPECT_EQ(r.sampling.temperature, 1.f);
  EXPECT_EQ(r.sampling.top_p, 1.f);
  EXPECT_FALSE(r.seeded);
  EXPECT_FALSE(r.max_tokens);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_FALSE(r.stream);
}

TEST(OpenAiApi, CompletionPromptForms) {
  EXPECT_EQ(completion(R"({"prompt": "hello"})").prompt, "hello");
  EXPECT_EQ(completion(R"({"prompt": ["hello"]})").prompt, "hello");
  EXPECT_EQ(completion(R"({"prompt": [1, 2, 3]})").prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(completion(R"({"prompt": [[4, 5]]})").prompt_ids, (std::vector<int32_t>{4, 5}));
  const auto r = completion(R"({"prompt": "x", "logprobs": 2, "stop": "\n", "max_tokens": 5})");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.max_tokens, 5);
}

TEST(OpenAiApi, MalformedBodies) {
  for (const char* b : {"", "{", "{\"messages\": [}", "not json", "{\"a\": 1,}"})
    expect_refused(chat, b, 400, "", "not valid JSON");
  for (const char* b : {"[]", "42", "\"s\"", "null"})
    expect_refused(chat, b, 400, "", "must be a JSON object");
}

TEST(OpenAiApi, WrongTypesNameTheField) {
  const std::string m = "{" + kMsgs + ", ";
  expect_refused(chat, m + R"("temperature": "hot"})", 400, "temperature", "a number");
  expect_refused(chat, m + R"("max_tokens": 1.5})", 400, "max_tokens", "an integer");
  expect_refused(chat, m + R"("max_tokens": "10"})", 400, "max_tokens");
  expect_refused(chat, m + R"("stream": "yes"})", 400, "stream", "a boolean");
  expect_refused(chat, m + R"("stop": 5})", 400, "stop");
  expect_refused(chat, m + R"("stop": ["a", 1]})", 400, "stop");
  expect_refused(chat, m + R"("seed": 0.5})", 400, "seed");
  expect_refused(chat, m + R"("model": 3})", 400, "model", "a string");
  expect_refused(chat, m + R"("logprobs": 1})", 400, "logprobs", "a boolean");
  expect_refused(chat, m + R"("stream": true, "stream_options": 1})", 400, "stream_options");
  expect_refused(chat, R"({"messages": "hi"})", 400, "messages", "an array");
  expect_refused(chat, R"({"messages": [1]})", 400, "messages[0]");
  expect_refused(chat, R"({"messages": [{"content": "x"}]})", 400, "messages[0].role");
  expect_refused(chat, R"({"messages": [{"role": 5, "content": "x"}]})", 400, "messages[0].role");
  expect_refused(chat, R"({"messages": [{"role": "user", "content": 5}]})", 400,
                 "messages[0].content");
  expect_refused(completion, R"({"prompt": {"a": 1}})", 400, "prompt");
  expect_refused(completion, R"({"prompt": [1, "a"]})", 400, "prompt");
  expect_refused(completion, R"({"prompt": [-1]})", 400, "prompt");
  expect_refused(completion, R"({"prompt": "x", "logprobs": true})", 400, "logprobs");
}

TEST(OpenAiApi, OutOfRangeAndMissing) {
  const std::string m = "{" + kMsgs + ", ";
  expect_refused(chat, "{}", 400, "messages", "required");
  expect_refused(chat, R"({"messages": []})", 400, "messages", "empty");
  expect_refused(chat, R"({"messages": [{"role": "robot", "content": "x"}]})", 400,
                 "messages[0].role");
  expect_refused(chat, R"({"messages": [{"role": "user"}]})", 400, "messages[0].content");
  expect_refused(completion, "{}", 400, "prompt", "required");
  expect_refused(completion, R"({"prompt": []})", 400, "prompt");
  expect_refused(chat, m + R"("temperature": -0.1})", 400, "temperature");
  expect_refused(chat, m + R"("temperature": 2.5})", 400, "temperature");
  expect_refused(chat, m + R"("top_p": 0})", 400, "top_p");
  expect_refused(chat, m + R"("top_p": 1.5})", 400, "top_p");
  expect_refused(chat, m + R"("top_k": -2})", 400, "top_k");
  expect_refused(chat, m + R"("max_tokens": 0})", 400, "max_tokens");
  expect_refused(chat, m + R"("max_tokens": 5000})", 400, "max_tokens", "limit of 4096");
  expect_refused(chat, m + R"("max_completion_tokens": 100000000000000000000})", 400,
                 "max_completion_tokens");
  expect_refused(chat, m + R"("top_logprobs": 21, "logprobs": true})", 400, "top_logprobs");
  expect_refused(chat, m + R"("top_logprobs": 2})", 400, "top_logprobs", "logprobs");
  expect_refused(chat, m + R"("stop": ["a", "b", "c", "d", "e"]})", 400, "stop");
  expect_refused(chat, m + R"("stop": [""]})", 400, "stop");
  expect_refused(chat, m + R"("stream_options": {"include_usage": true}})", 400, "stream_options");
  expect_refused(completion, R"({"prompt": "x", "logprobs": 6})", 400, "logprobs");
}

TEST(OpenAiApi, UnsupportedFeaturesAreRefusedClearly) {
  const std::string m = "{" + kMsgs + ", ";
  expect_refused(chat, m + R"("n": 2})", 400, "n", "one choice");
  expect_refused(chat, m + R"("presence_penalty": 0.5})", 400, "presence_penalty");
  expect_refused(chat, m + R"("frequency_penalty": 1})", 400, "frequency_penalty");
  expect_refused(chat, m + R"("logit_bias": {"5": 10}})", 400, "logit_bias");
  expect_refused(chat, m + R"("tools": [{"type": "function"}]})", 400, "tools");
  expect_refused(chat, m + R"("response_format": {"type": "json_object"}})", 400,
                 "response_format");
  expect_refused(chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                 400, "messages[0].content");
  expect_refused(completion, R"({"prompt": ["a", "b"]})", 400, "prompt", "one prompt");
  expect_refused(completion, R"({"prompt": "a", "echo": true})", 400, "echo");
  EXPECT_NO_THROW(chat(m + R"("tools": [], "response_format": {"type": "text"}})"));
}

TEST(OpenAiApi, ErrorObjectAndStatusTypes) {
  const ApiError e(401, "no key", "", "invalid_api_key");
  const json j = e.to_json();
  EXPECT_EQ(j["error"]["message"], "no key");
  EXPECT_EQ(j["error"]["type"], "authentication_error");
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_EQ(j["error"]["code"], "invalid_api_key");
  EXPECT_EQ(ApiError(400, "x").type(), "invalid_request_error");
  EXPECT_EQ(ApiError(500, "x").type(), "server_error");
  EXPECT_TRUE(ApiError(400, "x").to_json()["error"]["code"].is_null());
}

TEST(OpenAiApi, ResponseShapes) {
  const ResponseHeader h{"chatcmpl-1", 1700000000, "tiny"};
  const Usage u{5, 3, 2};
  const std::vector<TokenLogprob> lp{{"a", -0.5f, {{"a", -0.5f}, {"b", -1.5f}}}, {"\xE4", -2, {}}};
  json r = completion_response(h, true, "hi", "stop", &lp, u);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["usage"]["total_tokens"], 8);
  EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
  const json& c = r["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0]["top_logprobs"][1]["token"], "b");
  EXPECT_EQ(c[1]["bytes"], json::array({0xE4}));
  // A token that ends inside a character serializes (as U+FFFD) instead of throwing.
  EXPECT_NE(json_dump(r).find("\xEF\xBF\xBD"), std::string::npos);

  json t = completion_response(h, false, "hi", "length", &lp, u);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "hi");
  EXPECT_EQ(t["choices"][0]["logprobs"]["text_offset"], json::array({0, 1}));
  EXPECT_EQ(t["choices"][0]["logprobs"]["top_logprobs"][0]["b"], -1.5f);

  json first = completion_chunk(h, true, "", true, "", nullptr, 0);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  json last = completion_chunk(h, true, "", false, "stop", nullptr, 0);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  json uc = usage_chunk(h, true, u);
  EXPECT_TRUE(uc["choices"].empty());
  EXPECT_EQ(uc["usage"]["completion_tokens"], 3);
  const std::string ev = sse_event(json{{"a", 1}});
  EXPECT_EQ(ev, "data: {\"a\":1}\n\n");
  EXPECT_NE(new_response_id(true), new_response_id(true));
  EXPECT_EQ(new_response_id(false).rfind("cmpl-", 0), 0u);
}
