// libFuzzer target: the DeepSeek-V3 tokenizer (data/tokenizers/deepseek-v3, from
// scripts/setup.sh) on arbitrary bytes: encode (invalid UTF-8 included, with and without special
// tokens), decode of the result, and decode of the input read as a list of ids (any int32,
// unknown ids included).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_util.hpp"
#include "tokenizer/tokenizer.hpp"

namespace {
const dsv3::tok::Tokenizer& tokenizer() {
  static const dsv3::tok::Tokenizer t = [] {
    const char* dir = std::getenv("DSV3_FUZZ_TOKENIZER");
    return dsv3::tok::Tokenizer::load(dir ? dir : DSV3_SOURCE_DIR "/data/tokenizers/deepseek-v3");
  }();
  return t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tok = tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto ids = tok.encode(text, false);
  (void)tok.decode(ids, false);
  (void)tok.encode(text, true);
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  (void)tok.decode(raw, false);
  (void)tok.decode(raw, true);
  return 0;
}
