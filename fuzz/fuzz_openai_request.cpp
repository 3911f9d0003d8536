// libFuzzer target: an HTTP request body of `dsv3 serve` (issue 12's "the server's request
// parser") through parse_body and the /v1/chat/completions and /v1/completions validators, then
// the chat template of what was accepted and the response JSON built from it. ApiError (a 4xx for
// the client) and dsv3::Error are the expected answers to bad input; anything else is a bug.
#include <cstdint>
#include <string>

#include "fuzz_util.hpp"
#include "serve/openai_api.hpp"
#include "tokenizer/chat_template.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3::serve;
  const std::string text(reinterpret_cast<const char*>(data), size);
  ApiLimits lim;
  dsv3::fuzz::expect_clean([&] {
    nlohmann::json body;
    try {
      body = parse_body(text);
    } catch (const ApiError& e) {
      (void)json_dump(e.to_json());
      return;
    }
    for (bool chat : {true, false}) {
      try {
        const CompletionRequest r =
            chat ? parse_chat_request(body, lim) : parse_completion_request(body, lim);
        if (chat) (void)dsv3::tok::render_deepseek_v3_chat(r.messages, "<bos>", true);
        const ResponseHeader h{new_response_id(chat), 0, r.model};
        // The request's own text echoed into the response formats (arbitrary bytes on the wire).
        const std::string echo =
            chat && !r.messages.empty() ? r.messages.back().content.value_or("") : r.prompt;
        (void)sse_event(completion_chunk(h, chat, echo, true, "stop", nullptr, 0));
        (void)json_dump(completion_response(h, chat, echo, "length", nullptr, Usage{}));
      } catch (const ApiError& e) {
        DSV3_ASSERT(e.status() >= 400 && e.status() < 500, "status {}", e.status());
        (void)json_dump(e.to_json());
      }
    }
  });
  return 0;
}
