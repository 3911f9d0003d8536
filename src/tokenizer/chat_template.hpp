// The DeepSeek-V3 chat format: a hand-written renderer of the Jinja chat_template shipped in
// DeepSeek-V3's tokenizer_config.json (kDeepSeekV3ChatTemplate, verbatim), covering system, user,
// assistant and tool turns, assistant tool calls and add_generation_prompt. It reproduces the
// template's quirks on purpose (system prompts are hoisted to the front and joined with blank
// lines; the first tool call of the conversation does not close the tool-call block).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::tok {

struct ToolCall {
  std::string type = "function";
  std::string name, arguments;
};

struct ChatMessage {
  std::string role;  // system, user, assistant or tool; other roles are ignored, as by the template
  std::optional<std::string> content;  // null only for an assistant turn made of tool calls
  std::vector<ToolCall> tool_calls;
};

extern const char* const kDeepSeekV3ChatTemplate;

// True when `chat_template` is the DeepSeek-V3 template (whitespace at the ends ignored).
bool is_deepseek_v3_chat_template(std::string_view chat_template);

std::string render_deepseek_v3_chat(std::span<const ChatMessage> messages,
                                    std::string_view bos_token, bool add_generation_prompt);

// Messages in the OpenAI/HF form: [{"role": ..., "content": ..., "tool_calls": [{"type":
// "function", "function": {"name": ..., "arguments": ...}}]}].
std::vector<ChatMessage> chat_messages_from_json(const nlohmann::json& j);

}  // namespace dsv3::tok
