// Incremental detokenization with stop strings, for streaming replies: tokens go in one at a time,
// text comes out as soon as it is final. Held back are (a) the bytes of a UTF-8 character whose
// remaining bytes are in tokens not yet generated (the byte-level decoder shows them as U+FFFD)
// and (b) a tail that could be the start of a stop string. When a stop string appears, the text
// before it is released and the stream is stopped (OpenAI: the stop string is not returned).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

namespace dsv3::serve {

class TextStream {
 public:
  // `tk` must outlive the stream. Special tokens (end of sentence, ...) produce no text.
  TextStream(const tok::Tokenizer& tk, std::vector<std::string> stop);
  // Adds a generated token; returns the text that became final (may be empty).
  std::string push(int32_t token);
  // Generation ended: returns what was held back (nothing after a stop string).
  std::string finish();
  bool stopped() const { return stopped_; }
  const std::string& text() const { return out_; }  // everything released so far

 private:
  std::string release();  // text_ up to what may still change

  const tok::Tokenizer& tk_;
  std::vector<std::string> stop_;
  std::vector<int32_t> pending_;  // tokens whose text ends in an incomplete character
  std::string text_;              // decoded, not yet released: a tail that may begin a stop string
  std::string out_;
  bool stopped_ = false;
};

}  // namespace dsv3::serve
