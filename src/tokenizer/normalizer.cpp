// Normalizers, following tokenizers/src/normalizers of HF tokenizers.
#include "tokenizer/normalizer.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

// Byte length of the leading (or trailing) run of White_Space characters.
size_t white_prefix(std::string_view s) {
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  uint32_t cp;
  while (i < s.size()) {
    size_t len = utf8_decode(p + i, s.size() - i, &cp);
    if (!len || !is_white_space(cp)) break;
    i += len;
  }
  return i;
}

size_t white_suffix(std::string_view s) {
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t end = s.size();
  while (end > 0) {
    size_t b = end - 1;
    while (b > 0 && (p[b] & 0xC0) == 0x80) --b;
    uint32_t cp;
    if (!utf8_decode(p + b, end - b, &cp) || !is_white_space(cp)) break;
    end = b;
  }
  return s.size() - end;
}

}  // namespace

Normalizer Normalizer::from_json(const nlohmann::json& j) {
  Normalizer n;
  if (!j.is_null()) n.add(j);
  return n;
}

void Normalizer::add(const nlohmann::json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& sub : j.at("normalizers")) add(sub);
  } else if (type == "Prepend") {
    steps_.push_back({Step::Prepend, j.at("prepend").get<std::string>(), "", {}});
  } else if (type == "Replace") {
    const auto& pat = j.at("pattern");
    std::string content = j.at("content").get<std::string>();
    if (pat.contains("String")) {
      std::string text = pat.at("String").get<std::string>();
      DSV3_CHECK(!text.empty(), "tokenizer.json: Replace normalizer with an empty pattern");
      steps_.push_back({Step::ReplaceString, text, content, {}});
    } else {
      std::string re = pat.at("Regex").get<std::string>();
      steps_.push_back({Step::ReplaceRegex, re, content, Regex(re)});
    }
  } else if (type == "Strip") {
    Step s{Step::Strip, "", "", {}};
    s.left = j.value("strip_left", true);
    s.right = j.value("strip_right", true);
    steps_.push_back(std::move(s));
  } else {
    DSV3_FAIL(
        "tokenizer.json: normalizer '{}' is not supported (supported: Sequence, Prepend, "
        "Replace, Strip)",
        type);
  }
}

std::string Normalizer::normalize(std::string_view in) const {
  std::string s(in);
  for (const auto& st : steps_) {
    switch (st.kind) {
      case Step::Prepend:
        if (!s.empty()) s.insert(0, st.text);
        break;
      case Step::ReplaceString: {
        std::string out;
        size_t pos = 0;
        for (size_t f; (f = s.find(st.text, pos)) != std::string::npos; pos = f + st.text.size())
          out.append(s, pos, f - pos).append(st.content);
        s = out.append(s, pos);
        break;
      }
      case Step::ReplaceRegex: {
        std::string out;
        size_t pos = 0;
        st.regex.find_iter(s, [&](size_t b, size_t e) {
          out.append(s, pos, b - pos).append(st.content);
          pos = e;
        });
        s = out.append(s, pos);
        break;
      }
      case Step::Strip: {
        size_t l = st.left ? white_prefix(s) : 0;
        size_t r = st.right && l < s.size() ? white_suffix(std::string_view(s).substr(l)) : 0;
        s = s.substr(l, s.size() - l - r);
        break;
      }
    }
  }
  return s;
}

}  // namespace dsv3::tok
