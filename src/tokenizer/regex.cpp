// PCRE2 wrapper: Oniguruma-to-PCRE2 escape rewriting, JIT compilation, per-thread match data
// and JIT stack.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.hpp"

#include <pcre2.h>

#include "core/error.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

// Oniguruma's Unicode \s: \t\n\v\f\r, NEL (U+0085) and the Z categories. PCRE2's own \s under
// UCP differs (it lacks NEL and has U+180E), hence the rewrite.
constexpr const char* kSpace = "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}";
// Oniguruma's Unicode \w: Letter, Mark, Decimal_Number, Connector_Punctuation.
constexpr const char* kWord = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::string Regex::translate(std::string_view p) {
  std::string out;
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '[') {
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both syntaxes.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && class_depth > 0) {
      --class_depth;
      out += c;
      continue;
    }
    if (c != '\\' || i + 1 >= p.size()) {
      out += c;
      continue;
    }
    char e = p[++i];
    bool in_class = class_depth > 0;
    auto set = [&](const char* body, bool negate) {
      DSV3_CHECK(!(in_class && negate),
                 "regex '{}': negated class escape \\{} inside [...] is not supported", p, e);
      if (in_class)
        out += body;
      else
        out += std::string(negate ? "[^" : "[") + body + "]";
    };
    switch (e) {
      case 's':
        set(kSpace, false);
        break;
      case 'S':
        set(kSpace, true);
        break;
      case 'w':
        set(kWord, false);
        break;
      case 'W':
        set(kWord, true);
        break;
      case 'd':
        set("\\p{Nd}", false);
        break;
      case 'D':
        set("\\p{Nd}", true);
        break;
      case 'h':
        set("0-9a-fA-F", false);
        break;
      case 'H':
        set("0-9a-fA-F", true);
        break;
      case 'u':
        DSV3_CHECK(i + 4 < p.size(), "regex '{}': truncated \\u escape", p);
        out += "\\x{" + std::string(p.substr(i + 1, 4)) + "}";
        i += 4;
        break;
      default:
        out += '\\';
        out += e;
    }
  }
  return out;
}

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
  std::string pcre = translate(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre.data()), pcre.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &offset, nullptr);
  DSV3_CHECK(code, "regex '{}' does not compile (as PCRE2 '{}'): {} at offset {}", pattern, pcre,
             pcre2_message(err), offset);
  code_ =
      std::shared_ptr<void>(code, [](void* c) { pcre2_code_free(static_cast<pcre2_code*>(c)); });
  int jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  DSV3_CHECK(jit == 0, "regex '{}': PCRE2 JIT compile failed: {}", pattern, pcre2_message(jit));
}

bool Regex::search(std::string_view subject, size_t start, size_t* begin, size_t* end) const {
  auto& s = scratch();
  int rc = pcre2_jit_match(static_cast<pcre2_code*>(code_.get()),
                           reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), start, 0,
                           s.data, s.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  DSV3_CHECK(rc >= 0, "regex '{}': match failed: {}", pattern_, pcre2_message(rc));
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
  *begin = ov[0];
  *end = ov[1];
  return true;
}

size_t Regex::next_char_length(std::string_view s, size_t pos) {
  return utf8_lead_length(static_cast<unsigned char>(s[pos]));
}

}  // namespace dsv3::tok
