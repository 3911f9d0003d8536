// The byte-level alphabet of GPT-2 (bytes_to_unicode): each byte 0..255 is shown as one printable
// code point, so that BPE over bytes can use string tokens. Bytes 33..126, 161..172 and 174..255
// stand for themselves; the other 68 bytes map to U+0100.. in byte order.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3::tok {

struct ByteLevelAlphabet {
  std::array<uint32_t, 256> byte_to_cp;       // byte -> code point
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its code point
  std::array<int16_t, 324> cp_to_byte;        // code point (< 324) -> byte, -1 where none
};

const ByteLevelAlphabet& byte_level_alphabet();

// Every byte of `bytes` as its alphabet character.
std::string byte_level_encode(std::string_view bytes);
// Appends the bytes of `token` if every character of it is in the alphabet (true); otherwise
// appends nothing and returns false.
bool byte_level_decode(std::string_view token, std::string& out);

}  // namespace dsv3::tok
