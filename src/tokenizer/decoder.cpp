// Decoder chain: each step maps the token list to a new token list (decode_chain), the result
// is the concatenation.
#include "tokenizer/decoder.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "tokenizer/byte_level.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  for (size_t f; (f = s.find(from, pos)) != std::string::npos; pos = f + from.size())
    out.append(s, pos, f - pos).append(to);
  return out.append(s, pos);
}

// "<0xAB>" -> 0xAB, or -1.
int byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                  : -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Drops up to n leading (or trailing) copies of the one-character string c.
std::string strip_chars(const std::string& s, const std::string& c, int left, int right) {
  size_t b = 0, e = s.size();
  for (int i = 0; i < left && e - b >= c.size() && s.compare(b, c.size(), c) == 0; ++i)
    b += c.size();
  for (int i = 0; i < right && e - b >= c.size() && s.compare(e - c.size(), c.size(), c) == 0; ++i)
    e -= c.size();
  return s.substr(b, e - b);
}

}  // namespace

Decoder Decoder::from_json(const nlohmann::json& j) {
  Decoder d;
  if (!j.is_null()) {
    d.none_ = false;
    d.add(j);
  }
  return d;
}

void Decoder::add(const nlohmann::json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& sub : j.at("decoders")) add(sub);
  } else if (type == "ByteLevel") {
    steps_.push_back({Step::ByteLevel, "", ""});
  } else if (type == "Replace") {
    const auto& pat = j.at("pattern");
    DSV3_CHECK(pat.contains("String"),
               "tokenizer.json: Replace decoder with a regex pattern is not supported");
    steps_.push_back(
        {Step::Replace, pat.at("String").get<std::string>(), j.at("content").get<std::string>()});
  } else if (type == "ByteFallback") {
    steps_.push_back({Step::ByteFallback, "", ""});
  } else if (type == "Fuse") {
    steps_.push_back({Step::Fuse, "", ""});
  } else if (type == "Strip") {
    Step s{Step::Strip, j.at("content").get<std::string>(), ""};
    for (const char* k : {"start", "stop"})
      DSV3_CHECK(!j.contains(k) || (j.at(k).is_number_integer() && j.at(k).get<int64_t>() >= 0 &&
                                    j.at(k).get<int64_t>() <= INT32_MAX),
                 "tokenizer.json: Strip decoder '{}' must be an integer >= 0, got {}", k,
                 j.contains(k) ? j.at(k).dump() : "");
    s.start = int(j.value("start", int64_t(0)));
    s.stop = int(j.value("stop", int64_t(0)));
    steps_.push_back(std::move(s));
  } else if (type == "Metaspace") {
    Step s{Step::Metaspace, j.value("replacement", "\u2581"), ""};
    if (j.contains("prepend_scheme"))
      s.prepend = j.at("prepend_scheme").get<std::string>() != "never";
    else
      s.prepend = j.value("add_prefix_space", true);
    steps_.push_back(std::move(s));
  } else {
    DSV3_FAIL(
        "tokenizer.json: decoder '{}' is not supported (supported: ByteLevel, Sequence, "
        "Replace, ByteFallback, Fuse, Strip, Metaspace)",
        type);
  }
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (none_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const auto& st : steps_) {
    std::vector<std::string> next;
    switch (st.kind) {
      case Step::ByteLevel: {
        std::string bytes;
        for (const auto& t : tokens)
          if (!byte_level_decode(t, bytes)) bytes += t;
        next.push_back(utf8_lossy(bytes));
        break;
      }
      case Step::Replace:
        for (const auto& t : tokens) next.push_back(replace_all(t, st.a, st.b));
        break;
      case Step::ByteFallback: {
        std::string pending;
        auto flush = [&] {
          if (pending.empty()) return;
          if (utf8_is_valid(pending))
            next.push_back(pending);
          else
            for (size_t i = 0; i < pending.size(); ++i) next.push_back("\xEF\xBF\xBD");
          pending.clear();
        };
        for (const auto& t : tokens) {
          int byte = byte_token(t);
          if (byte >= 0) {
            pending += char(byte);
          } else {
            flush();
            next.push_back(t);
          }
        }
        flush();
        break;
      }
      case Step::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        next.push_back(all);
        break;
      }
      case Step::Strip:
        for (const auto& t : tokens) next.push_back(strip_chars(t, st.a, st.start, st.stop));
        break;
      case Step::Metaspace:
        for (size_t i = 0; i < tokens.size(); ++i)
          next.push_back(replace_all(tokens[i], st.a, i == 0 && st.prepend ? "" : " "));
        break;
    }
    tokens = std::move(next);
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

}  // namespace dsv3::tok
