// TextStream: decode the tokens of an incomplete character together, then search the stop strings
// in the decoded text, holding back only the longest tail that is a prefix of one of them.
#include "serve/text_stream.hpp"

#include <algorithm>

namespace dsv3::serve {

namespace {
// U+FFFD at the end: the byte-level decoder's mark for a character cut short.
bool ends_with_partial_char(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
// A UTF-8 character is at most 4 bytes, and one token holds at least one of them; beyond this
// many tokens the U+FFFD is real (an invalid sequence) and is released as it is.
constexpr size_t kMaxPending = 4;
}  // namespace

TextStream::TextStream(const tok::Tokenizer& tk, std::vector<std::string> stop)
    : tk_(tk), stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
}

std::string TextStream::push(int32_t token) {
  if (stopped_) return {};
  pending_.push_back(token);
  std::string piece = tk_.decode(pending_, /*skip_special_tokens=*/true);
  if (ends_with_partial_char(piece) && pending_.size() < kMaxPending) return {};
  pending_.clear();
  text_ += piece;
  return release();
}

std::string TextStream::release() {
  // The earliest stop string in the unreleased text.
  size_t hit = std::string::npos;
  for (const auto& s : stop_) {
    const size_t p = text_.find(s);
    if (p != std::string::npos) hit = std::min(hit, p);
  }
  std::string out;
  if (hit != std::string::npos) {
    out = text_.substr(0, hit);
    text_.clear();
    stopped_ = true;
  } else {
    // Hold the longest tail that is a proper prefix of a stop string.
    size_t hold = 0;
    for (const auto& s : stop_)
      for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; --k)
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    out = text_.substr(0, text_.size() - hold);
    text_.erase(0, text_.size() - hold);
  }
  out_ += out;
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return {};
  if (!pending_.empty()) {
    text_ += tk_.decode(pending_, true);
    pending_.clear();
  }
  std::string out = release();
  if (stopped_) return out;
  out += text_;
  out_ += text_;
  text_.clear();
  return out;
}

}  // namespace dsv3::serve
