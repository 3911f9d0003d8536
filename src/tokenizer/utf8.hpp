// UTF-8 helpers for the tokenizer: decoding one code point, validity, and the lossy conversion
// that turns every maximal invalid subpart into U+FFFD (Unicode 15 §3.9 "U+FFFD substitution of
// maximal subparts", the policy of Rust's String::from_utf8_lossy and Python's errors="replace").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3::tok {

// Length (1..4) of the valid UTF-8 sequence at s[0..n) and its code point in *cp; 0 when the
// bytes at s do not start a valid sequence.
size_t utf8_decode(const unsigned char* s, size_t n, uint32_t* cp);
// Length of the maximal invalid subpart at s (>= 1); call only where utf8_decode returned 0.
size_t utf8_invalid_length(const unsigned char* s, size_t n);
bool utf8_is_valid(std::string_view s);
// Every maximal invalid subpart replaced by U+FFFD; valid input is returned unchanged.
std::string utf8_lossy(std::string_view s);
void utf8_append(std::string& out, uint32_t cp);
// Unicode White_Space (Rust's char::is_whitespace, regex \s of the Rust regex crate).
inline bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}
// Length of the UTF-8 sequence that starts with lead byte b (1 for a stray continuation byte).
inline size_t utf8_lead_length(unsigned char b) {
  return b < 0x80 ? 1 : b < 0xE0 ? (b < 0xC0 ? 1 : 2) : b < 0xF0 ? 3 : 4;
}

}  // namespace dsv3::tok
