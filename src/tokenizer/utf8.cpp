// UTF-8 decoding with the well-formed byte table of Unicode 15 Table 3-7.
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

// Allowed range of the second byte for a lead byte; the other continuation bytes are 80..BF.
bool second_byte_ok(unsigned char lead, unsigned char b) {
  if (lead == 0xE0) return b >= 0xA0 && b <= 0xBF;
  if (lead == 0xED) return b >= 0x80 && b <= 0x9F;
  if (lead == 0xF0) return b >= 0x90 && b <= 0xBF;
  if (lead == 0xF4) return b >= 0x80 && b <= 0x8F;
  return b >= 0x80 && b <= 0xBF;
}

size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

}  // namespace

size_t utf8_decode(const unsigned char* s, size_t n, uint32_t* cp) {
  if (n == 0) return 0;
  unsigned char lead = s[0];
  size_t len = sequence_length(lead);
  if (len == 0 || len > n) return 0;
  if (len == 1) {
    *cp = lead;
    return 1;
  }
  if (!second_byte_ok(lead, s[1])) return 0;
  for (size_t i = 2; i < len; ++i)
    if ((s[i] & 0xC0) != 0x80) return 0;
  uint32_t c = lead & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) c = (c << 6) | (s[i] & 0x3F);
  *cp = c;
  return len;
}

size_t utf8_invalid_length(const unsigned char* s, size_t n) {
  size_t len = sequence_length(s[0]);
  if (len <= 1 || n < 2 || !second_byte_ok(s[0], s[1])) return 1;
  size_t i = 2;
  while (i < len && i < n && (s[i] & 0xC0) == 0x80) ++i;
  return i;
}

bool utf8_is_valid(std::string_view sv) {
  auto* s = reinterpret_cast<const unsigned char*>(sv.data());
  size_t n = sv.size(), i = 0;
  uint32_t cp;
  while (i < n) {
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len = utf8_decode(s + i, n - i, &cp);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string utf8_lossy(std::string_view sv) {
  if (utf8_is_valid(sv)) return std::string(sv);
  auto* s = reinterpret_cast<const unsigned char*>(sv.data());
  size_t n = sv.size(), i = 0;
  std::string out;
  out.reserve(n + 16);
  uint32_t cp;
  while (i < n) {
    size_t len = utf8_decode(s + i, n - i, &cp);
    if (len) {
      out.append(sv.data() + i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += utf8_invalid_length(s + i, n - i);
    }
  }
  return out;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace dsv3::tok
