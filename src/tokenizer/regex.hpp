// Regexes of tokenizer.json (Split pre-tokenizers, Replace normalizers) on PCRE2 with JIT.
// HF tokenizers compiles them with Oniguruma (Ruby syntax); the few escapes whose meaning differs
// in PCRE2 (\s \S \w \W \d \D \h \H \uHHHH) are rewritten to explicit Unicode classes before
// compiling, and find_iter repeats Oniguruma's iteration rule for empty matches.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace dsv3::tok {

class Regex {
 public:
  Regex() = default;
  // `pattern` is Oniguruma syntax; throws dsv3::Error naming the pattern when it cannot compile.
  explicit Regex(std::string_view pattern);

  bool empty() const { return !code_; }
  const std::string& pattern() const { return pattern_; }

  // First match at or after `start` in `subject` (valid UTF-8): true and [*begin, *end).
  bool search(std::string_view subject, size_t start, size_t* begin, size_t* end) const;

  // Calls fn(begin, end) for each match left to right (Oniguruma find_iter: an empty match right
  // where the previous match ended is skipped by one character).
  template <typename Fn>
  void find_iter(std::string_view subject, Fn&& fn) const {
    size_t pos = 0, last_end = size_t(-1), b, e;
    while (pos <= subject.size() && search(subject, pos, &b, &e)) {
      if (b == e && last_end == e) {
        if (pos >= subject.size()) break;
        pos += next_char_length(subject, pos);
        continue;
      }
      fn(b, e);
      pos = last_end = e;
    }
  }

  // The PCRE2 pattern that Oniguruma `pattern` was rewritten to (exposed for tests).
  static std::string translate(std::string_view pattern);

 private:
  static size_t next_char_length(std::string_view s, size_t pos);
  std::string pattern_;
  std::shared_ptr<void> code_;  // pcre2_code_8, freed by its deleter
};

}  // namespace dsv3::tok
