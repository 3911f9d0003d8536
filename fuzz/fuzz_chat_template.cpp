// libFuzzer target: a conversation as JSON (roles, contents, tool calls) through
// chat_messages_from_json and the DeepSeek-V3 chat-template renderer, with and without the
// generation prompt. Inputs that are not JSON are rendered as the content of one user turn.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_util.hpp"
#include "tokenizer/chat_template.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dsv3::tok::ChatMessage;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    std::vector<ChatMessage> one(1);
    one[0].role = size % 2 ? "user" : "assistant";
    one[0].content = text;
    (void)dsv3::tok::render_deepseek_v3_chat(one, "<bos>", true);
    return 0;
  }
  dsv3::fuzz::expect_clean([&] {
    const auto messages = dsv3::tok::chat_messages_from_json(j);
    (void)dsv3::tok::render_deepseek_v3_chat(messages, "<bos>", false);
    (void)dsv3::tok::render_deepseek_v3_chat(messages, "", true);
  });
  return 0;
}
