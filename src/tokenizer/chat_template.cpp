// DeepSeek-V3 chat template, rendered by hand. The logic below mirrors the template statement by
// statement (the template text is kept verbatim to recognise it in tokenizer_config.json).
#include "tokenizer/chat_template.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace dsv3::tok {

const char* const kDeepSeekV3ChatTemplate =
    "{% if not add_generation_prompt is defined %}"
    "{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', "
    "is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}{%- else %}"
    "{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}"
    "{%- endif %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
    "{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + "
    "tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] "
    "+ '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}"
    "{% endif %}";

namespace {

std::string_view trim(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; };
  while (!s.empty() && ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && ws(s.back())) s.remove_suffix(1);
  return s;
}

const std::string& content_of(const ChatMessage& m) {
  DSV3_CHECK(m.content.has_value(), "chat template: a '{}' message needs a content string", m.role);
  return *m.content;
}

std::string tool_call_text(const ToolCall& t) {
  return t.type + "<｜tool▁sep｜>" + t.name + "\n```json\n" + t.arguments +
         "\n```<｜tool▁call▁end｜>";
}

}  // namespace

bool is_deepseek_v3_chat_template(std::string_view chat_template) {
  return trim(chat_template) == trim(kDeepSeekV3ChatTemplate);
}

std::string render_deepseek_v3_chat(std::span<const ChatMessage> messages,
                                    std::string_view bos_token, bool add_generation_prompt) {
  // ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='',
  //                is_first_sp=true)
  bool is_first = false, is_tool = false, is_output_first = true, is_first_sp = true;
  std::string system_prompt;
  for (const auto& m : messages) {
    if (m.role != "system") continue;
    if (!is_first_sp) system_prompt += "\n\n";
    system_prompt += content_of(m);
    is_first_sp = false;
  }
  std::string out(bos_token);
  out += system_prompt;
  for (const auto& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      out += "<｜User｜>" + content_of(m);
    }
    if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const auto& t : m.tool_calls) {
        if (!is_first) {
          out += "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>" + tool_call_text(t);
          is_first = true;
        } else {
          out += "\n<｜tool▁call▁begin｜>" + tool_call_text(t);
          out += "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
        }
      }
    }
    if (m.role == "assistant" && m.content) {
      if (is_tool) {
        out += "<｜tool▁outputs▁end｜>" + *m.content + "<｜end▁of▁sentence｜>";
        is_tool = false;
      } else {
        out += "<｜Assistant｜>" + *m.content + "<｜end▁of▁sentence｜>";
      }
    }
    if (m.role == "tool") {
      is_tool = true;
      if (is_output_first) {
        out += "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + content_of(m) +
               "<｜tool▁output▁end｜>";
        is_output_first = false;
      } else {
        out += "\n<｜tool▁output▁begin｜>" + content_of(m) + "<｜tool▁output▁end｜>";
      }
    }
  }
  if (is_tool) out += "<｜tool▁outputs▁end｜>";
  if (add_generation_prompt && !is_tool) out += "<｜Assistant｜>";
  return out;
}

namespace {
// The string at `key` of a chat message; the error names the message and the key rather than
// surfacing the JSON library's type error.
std::string message_string(const nlohmann::json& o, const char* key, const std::string& where) {
  DSV3_CHECK(o.is_object() && o.contains(key), "{}: no '{}'", where, key);
  DSV3_CHECK(o.at(key).is_string(), "{}: '{}' must be a string, got {}", where, key,
             o.at(key).type_name());
  return o.at(key).get<std::string>();
}
}  // namespace

std::vector<ChatMessage> chat_messages_from_json(const nlohmann::json& j) {
  DSV3_CHECK(j.is_array(), "chat messages must be a JSON array, got {}", j.type_name());
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& mj = j[i];
    const std::string where = fmt::format("chat message {}", i);
    DSV3_CHECK(mj.is_object(), "{} is not a JSON object", where);
    ChatMessage m;
    m.role = message_string(mj, "role", where);
    if (mj.contains("content") && !mj.at("content").is_null())
      m.content = message_string(mj, "content", where);
    if (mj.contains("tool_calls")) {
      const auto& calls = mj.at("tool_calls");
      DSV3_CHECK(calls.is_array(), "{}: 'tool_calls' must be an array", where);
      for (size_t k = 0; k < calls.size(); ++k) {
        const auto& tj = calls[k];
        const std::string tw = fmt::format("{} tool_calls[{}]", where, k);
        DSV3_CHECK(tj.is_object(), "{} is not a JSON object", tw);
        ToolCall t;
        t.type = tj.contains("type") ? message_string(tj, "type", tw) : "function";
        DSV3_CHECK(tj.contains("function") && tj.at("function").is_object(),
                   "{}: 'function' must be an object", tw);
        const auto& f = tj.at("function");
        t.name = message_string(f, "name", tw + ".function");
        DSV3_CHECK(f.contains("arguments"), "{}.function: no 'arguments'", tw);
        const auto& args = f.at("arguments");
        t.arguments = args.is_string()
                          ? args.get<std::string>()
                          : args.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        m.tool_calls.push_back(std::move(t));
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace dsv3::tok
