// The OpenAI HTTP API of `dsv3 serve` without the HTTP: request parsing and validation for
// /v1/chat/completions and /v1/completions, the error object, and the response and stream-chunk
// JSON (the formats of platform.openai.com/docs/api-reference/chat and .../completions).
//
// Parsing is strict about the fields it knows (wrong type or out of range -> 400 naming the
// field) and ignores fields it does not know, as OpenAI-compatible servers do. Features dsv3 does
// not have (n > 1, penalties, logit_bias, tools, JSON mode, echo) are refused with a clear message
// rather than silently ignored.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "serve/sampler.hpp"
#include "tokenizer/chat_template.hpp"

namespace dsv3::serve {

// An error for the client: the HTTP status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {},
           std::string type = {});
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }  // empty: null
  const std::string& code() const { return code_; }    // empty: null
  nlohmann::json to_json() const;

 private:
  int status_;
  std::string type_, param_, code_;
};

// Serializes for the wire: invalid UTF-8 (a token that ends inside a character) becomes U+FFFD
// instead of an exception.
std::string json_dump(const nlohmann::json& j);

struct ApiLimits {
  int64_t max_tokens = 4096;  // the most new tokens a request may ask for
  int64_t max_stop = 4;       // stop strings per request
  int64_t max_stop_bytes = 256;
  int64_t max_top_logprobs = 20;
};

struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::vector<tok::ChatMessage> messages;  // chat
  std::string prompt;                      // completions, as text
  std::vector<int32_t> prompt_ids;         // completions, as token ids (then prompt is empty)
  SamplingParams sampling{1.0f, 0, 1.0f, 0};
  bool seeded = false;                          // a seed was given (else the server draws one)
  std::optional<int64_t> max_tokens;            // absent: up to the context, capped by ApiLimits
  std::string max_tokens_param = "max_tokens";  // or max_completion_tokens: the one given
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  bool logprobs = false;
  int64_t top_logprobs = 0;
  bool ignore_eos = false;  // extension (vLLM's): generate max_tokens even past end-of-sequence
};

// Throw ApiError (status 400) for anything malformed, naming the field.
CompletionRequest parse_chat_request(const nlohmann::json& body, const ApiLimits& lim);
CompletionRequest parse_completion_request(const nlohmann::json& body, const ApiLimits& lim);
// The body as JSON, or ApiError 400 for malformed JSON or a non-object.
nlohmann::json parse_body(const std::string& body);

// One generated token's log-probabilities, in text form, for the response.
struct TokenLogprob {
  std::string token;  // the token's bytes (may be part of a UTF-8 character)
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};

// Response identity shared by every chunk of one request.
struct ResponseHeader {
  std::string id;  // chatcmpl-... or cmpl-...
  int64_t created = 0;
  std::string model;
};

std::string new_response_id(bool chat);

nlohmann::json usage_json(const Usage& u);
// Logprobs objects: chat ({"content": [...]}) and completions ({"tokens", "token_logprobs",
// "top_logprobs", "text_offset"}); text_offset counts from `offset`.
nlohmann::json chat_logprobs_json(const std::vector<TokenLogprob>& lp);
nlohmann::json completion_logprobs_json(const std::vector<TokenLogprob>& lp, size_t offset);

// A whole (non-streamed) response.
nlohmann::json completion_response(const ResponseHeader& h, bool chat, const std::string& text,
                                   const std::string& finish_reason,
                                   const std::vector<TokenLogprob>* logprobs, const Usage& u);
// One stream chunk. Chat: `role` adds "role": "assistant" to the delta (the first chunk);
// finish_reason empty is null. logprobs null when absent.
nlohmann::json completion_chunk(const ResponseHeader& h, bool chat, const std::string& text,
                                bool role, const std::string& finish_reason,
                                const std::vector<TokenLogprob>* logprobs, size_t text_offset);
// The last chunk of a stream with stream_options.include_usage: no choices, the usage.
nlohmann::json usage_chunk(const ResponseHeader& h, bool chat, const Usage& u);

// "data: <json>\n\n"
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

}  // namespace dsv3::serve
