// OpenAI API requests and responses: strict parsing of the known fields, OpenAI's error object,
// and the chat.completion / text_completion objects and their stream chunks.
#include "serve/openai_api.hpp"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <random>

namespace dsv3::serve {

using nlohmann::json;

namespace {
const char* default_error_type(int status) {
  switch (status) {
    case 401:
      return "authentication_error";
    case 404:
      return "not_found_error";
    case 429:
      return "rate_limit_error";
    case 500:
      return "server_error";
    case 503:
      return "server_error";
    default:
      return "invalid_request_error";
  }
}
}  // namespace

ApiError::ApiError(int status, const std::string& message, std::string param, std::string code,
                   std::string type)
    : std::runtime_error(message),
      status_(status),
      type_(type.empty() ? default_error_type(status) : std::move(type)),
      param_(std::move(param)),
      code_(std::move(code)) {}

json ApiError::to_json() const {
  json e = {{"message", what()},
            {"type", type_},
            {"param", param_.empty() ? json(nullptr) : json(param_)},
            {"code", code_.empty() ? json(nullptr) : json(code_)}};
  return {{"error", e}};
}

std::string json_dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw ApiError(400, "the request body is not valid JSON", "", "invalid_json");
  if (!j.is_object())
    throw ApiError(400,
                   fmt::format("the request body must be a JSON object, got {}", j.type_name()), "",
                   "invalid_json");
  return j;
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) {
  throw ApiError(400, msg, param, "invalid_value");
}

[[noreturn]] void bad_type(const std::string& param, const char* expected, const json& v) {
  throw ApiError(400, fmt::format("'{}' must be {}, got {}", param, expected, v.type_name()), param,
                 "invalid_type");
}

// The field's value, or nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const json& body, const char* key, double lo, double hi) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_type(key, "a number", *v);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(key, fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, v->dump()));
  return x;
}

std::optional<int64_t> get_int(const json& body, const char* key, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) bad_type(key, "an integer", *v);
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
    bad(key, fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, v->dump()));
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad(key, fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, x));
  return x;
}

std::optional<bool> get_bool(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad_type(key, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad_type(key, "a string", *v);
  return v->get<std::string>();
}

[[noreturn]] void unsupported(const std::string& param, const std::string& msg) {
  throw ApiError(400, msg, param, "unsupported_parameter");
}

// Fields both endpoints share: sampling, length, stop, stream, and the refused features.
void parse_common(const json& b, const ApiLimits& lim, CompletionRequest& r) {
  if (auto m = get_string(b, "model")) r.model = *m;
  if (auto t = get_number(b, "temperature", 0, 2)) r.sampling.temperature = float(*t);
  if (auto p = get_number(b, "top_p", 0, 1)) {
    if (*p <= 0) bad("top_p", "'top_p' must be in (0, 1]: 0 keeps no token (use temperature 0)");
    r.sampling.top_p = float(*p);
  }
  if (auto k = get_int(b, "top_k", -1, INT32_MAX)) r.sampling.top_k = std::max<int64_t>(*k, 0);
  if (auto s = get_int(b, "seed", INT64_MIN, INT64_MAX)) {
    r.sampling.seed = uint64_t(*s);
    r.seeded = true;
  }
  // max_completion_tokens is the newer name (chat); it wins when both are given.
  std::optional<int64_t> mt = get_int(b, "max_tokens", 1, INT64_MAX);
  if (auto mct = get_int(b, "max_completion_tokens", 1, INT64_MAX)) {
    mt = mct;
    r.max_tokens_param = "max_completion_tokens";
  }
  if (mt && *mt > lim.max_tokens)
    bad(r.max_tokens_param,
        fmt::format("max_tokens {} exceeds this server's limit of {}", *mt, lim.max_tokens));
  r.max_tokens = mt;
  if (const json* s = field(b, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const auto& e : *s) {
        if (!e.is_string()) bad_type("stop", "a string or an array of strings", e);
        r.stop.push_back(e.get<std::string>());
      }
    } else {
      bad_type("stop", "a string or an array of strings", *s);
    }
    if (int64_t(r.stop.size()) > lim.max_stop)
      bad("stop", fmt::format("at most {} stop strings, got {}", lim.max_stop, r.stop.size()));
    for (const auto& s1 : r.stop) {
      if (s1.empty()) bad("stop", "stop strings must not be empty");
      if (int64_t(s1.size()) > lim.max_stop_bytes)
        bad("stop", fmt::format("stop strings are limited to {} bytes", lim.max_stop_bytes));
    }
  }
  r.stream = get_bool(b, "stream").value_or(false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad_type("stream_options", "an object", *so);
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    r.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  if (auto n = get_int(b, "n", 1, 128); n && *n != 1)
    unsupported("n", "dsv3 serve generates one choice per request: 'n' must be 1");
  for (const char* pen : {"presence_penalty", "frequency_penalty"})
    if (auto p = get_number(b, pen, -2, 2); p && *p != 0)
      unsupported(pen, fmt::format("'{}' is not supported (only 0)", pen));
  if (const json* lb = field(b, "logit_bias")) {
    if (!lb->is_object()) bad_type("logit_bias", "an object", *lb);
    if (!lb->empty()) unsupported("logit_bias", "'logit_bias' is not supported");
  }
  if (const json* bo = field(b, "best_of"); bo && *bo != 1)
    unsupported("best_of", "'best_of' must be 1");
  get_string(b, "user");
  r.ignore_eos = get_bool(b, "ignore_eos").value_or(false);
}

std::string text_of_content(const json& c, const std::string& where) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad_type(where, "a string, an array of text parts or null", c);
  std::string out;
  for (const auto& part : c) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      bad(where, fmt::format("{}: each content part must be an object with a 'type'", where));
    if (part["type"] != "text")
      unsupported(where, fmt::format("{}: only text content parts are supported, got '{}'", where,
                                     part["type"].get<std::string>()));
    if (!part.contains("text") || !part["text"].is_string())
      bad(where, fmt::format("{}: a text part needs a string 'text'", where));
    out += part["text"].get<std::string>();
  }
  return out;
}

std::vector<tok::ChatMessage> parse_messages(const json& b) {
  const json* ms = field(b, "messages");
  if (!ms) bad("messages", "'messages' is required");
  if (!ms->is_array()) bad_type("messages", "an array", *ms);
  if (ms->empty()) bad("messages", "'messages' must not be empty");
  std::vector<tok::ChatMessage> out;
  for (size_t i = 0; i < ms->size(); ++i) {
    const json& m = (*ms)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad_type(where, "an object", m);
    tok::ChatMessage cm;
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad(where + ".role", where + ".role must be a string");
    cm.role = role->get<std::string>();
    if (cm.role == "developer") cm.role = "system";
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant" && cm.role != "tool")
      bad(where + ".role",
          fmt::format("{}.role must be system, developer, user, assistant or tool, got '{}'", where,
                      cm.role));
    if (const json* c = field(m, "content")) cm.content = text_of_content(*c, where + ".content");
    if (const json* tc = field(m, "tool_calls")) {
      if (cm.role != "assistant")
        bad(where + ".tool_calls", "only assistant messages have tool_calls");
      try {
        json one = json::array({{{"role", "assistant"}, {"tool_calls", *tc}}});
        cm.tool_calls = tok::chat_messages_from_json(one)[0].tool_calls;
      } catch (const std::exception& e) {
        bad(where + ".tool_calls", e.what());
      }
    }
    if (!cm.content && cm.tool_calls.empty())
      bad(where + ".content", fmt::format("{} has no content", where));
    out.push_back(std::move(cm));
  }
  return out;
}

}  // namespace

CompletionRequest parse_chat_request(const json& b, const ApiLimits& lim) {
  CompletionRequest r;
  r.chat = true;
  r.messages = parse_messages(b);
  parse_common(b, lim, r);
  r.logprobs = get_bool(b, "logprobs").value_or(false);
  if (auto t = get_int(b, "top_logprobs", 0, lim.max_top_logprobs)) {
    if (!r.logprobs && *t > 0) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.top_logprobs = *t;
  }
  if (const json* t = field(b, "tools"); t && !(t->is_array() && t->empty()))
    unsupported("tools", "tool calling is not supported");
  if (const json* rf = field(b, "response_format")) {
    if (!rf->is_object()) bad_type("response_format", "an object", *rf);
    if (rf->value("type", "") != "text")
      unsupported("response_format", "only response_format {\"type\": \"text\"} is supported");
  }
  return r;
}

CompletionRequest parse_completion_request(const json& b, const ApiLimits& lim) {
  CompletionRequest r;
  const json* p = field(b, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  auto ids_of = [](const json& a) {
    std::vector<int32_t> ids;
    for (const auto& e : a) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX)
        bad("prompt", "a token-id prompt must hold non-negative integers");
      ids.push_back(int32_t(e.get<int64_t>()));
    }
    if (ids.empty()) bad("prompt", "the prompt has no tokens");
    return ids;
  };
  const char* kinds = "a string, an array of token ids, or an array of one of these";
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
  } else if (p->is_array() && !p->empty() && ((*p)[0].is_string() || (*p)[0].is_array())) {
    if (p->size() != 1)
      unsupported("prompt", "dsv3 serve takes one prompt per request (send several requests)");
    const json& e = (*p)[0];
    if (e.is_string())
      r.prompt = e.get<std::string>();
    else
      r.prompt_ids = ids_of(e);
  } else if (p->is_array()) {
    r.prompt_ids = ids_of(*p);
  } else {
    bad_type("prompt", kinds, *p);
  }
  parse_common(b, lim, r);
  if (auto lp = get_int(b, "logprobs", 0, std::min<int64_t>(5, lim.max_top_logprobs))) {
    r.logprobs = true;
    r.top_logprobs = *lp;
  }
  if (get_bool(b, "echo").value_or(false)) unsupported("echo", "'echo' is not supported");
  if (const json* s = field(b, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    unsupported("suffix", "'suffix' is not supported");
  return r;
}

std::string new_response_id(bool chat) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
  return fmt::format("{}-{:016x}{:08x}", chat ? "chatcmpl" : "cmpl", salt,
                     uint32_t(counter.fetch_add(1)));
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {
json bytes_of(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(int(c));
  return a;
}
}  // namespace

json chat_logprobs_json(const std::vector<TokenLogprob>& lp) {
  json content = json::array();
  for (const auto& t : lp) {
    json top = json::array();
    for (const auto& [s, l] : t.top)
      top.push_back({{"token", s}, {"logprob", l}, {"bytes", bytes_of(s)}});
    content.push_back({{"token", t.token},
                       {"logprob", t.logprob},
                       {"bytes", bytes_of(t.token)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json completion_logprobs_json(const std::vector<TokenLogprob>& lp, size_t offset) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const auto& t : lp) {
    tokens.push_back(t.token);
    lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [s, l] : t.top) top[s] = l;
    tops.push_back(top);
    offs.push_back(offset);
    offset += t.token.size();
  }
  return {
      {"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

json completion_response(const ResponseHeader& h, bool chat, const std::string& text,
                         const std::string& finish_reason,
                         const std::vector<TokenLogprob>* logprobs, const Usage& u) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
    choice["logprobs"] = logprobs ? chat_logprobs_json(*logprobs) : json(nullptr);
  } else {
    choice["text"] = text;
    choice["logprobs"] = logprobs ? completion_logprobs_json(*logprobs, 0) : json(nullptr);
  }
  return {{"id", h.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", json::array({choice})},
          {"usage", usage_json(u)}};
}

json completion_chunk(const ResponseHeader& h, bool chat, const std::string& text, bool role,
                      const std::string& finish_reason, const std::vector<TokenLogprob>* logprobs,
                      size_t text_offset) {
  json choice = {{"index", 0},
                 {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
  if (chat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (!text.empty() || role) delta["content"] = text;
    choice["delta"] = delta;
    choice["logprobs"] = logprobs ? chat_logprobs_json(*logprobs) : json(nullptr);
  } else {
    choice["text"] = text;
    choice["logprobs"] =
        logprobs ? completion_logprobs_json(*logprobs, text_offset) : json(nullptr);
  }
  return {{"id", h.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", json::array({choice})}};
}

json usage_chunk(const ResponseHeader& h, bool chat, const Usage& u) {
  return {{"id", h.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", json::array()},
          {"usage", usage_json(u)}};
}

std::string sse_event(const json& j) {
  return "data: " + json_dump(j) + "\n\n";
}

}  // namespace dsv3::serve
