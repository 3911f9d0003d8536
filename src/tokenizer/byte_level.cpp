// GPT-2 byte-level alphabet tables.
#include "tokenizer/byte_level.hpp"

#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

ByteLevelAlphabet build() {
  ByteLevelAlphabet a;
  a.cp_to_byte.fill(-1);
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    bool self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = self ? uint32_t(b) : next++;
    a.byte_to_cp[b] = cp;
    a.cp_to_byte[cp] = int16_t(b);
    utf8_append(a.byte_to_utf8[b], cp);
  }
  return a;
}

}  // namespace

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet a = build();
  return a;
}

std::string byte_level_encode(std::string_view bytes) {
  const auto& a = byte_level_alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += a.byte_to_utf8[b];
  return out;
}

bool byte_level_decode(std::string_view token, std::string& out) {
  const auto& a = byte_level_alphabet();
  auto* s = reinterpret_cast<const unsigned char*>(token.data());
  size_t n = token.size(), start = out.size();
  for (size_t i = 0; i < n;) {
    uint32_t cp = 0;
    size_t len = utf8_decode(s + i, n - i, &cp);
    if (len == 0 || cp >= a.cp_to_byte.size() || a.cp_to_byte[cp] < 0) {
      out.resize(start);
      return false;
    }
    out += char(a.cp_to_byte[cp]);
    i += len;
  }
  return true;
}

}  // namespace dsv3::tok
