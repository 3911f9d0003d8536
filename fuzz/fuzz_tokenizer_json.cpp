// libFuzzer target: tokenizer.json text (model, merges, added tokens, normalizer, pre-tokenizer,
// post-processor, decoder) through Tokenizer::from_json; what loads then encodes and decodes a
// short text and its own ids.
#include <cstdint>
#include <string>

#include "fuzz_util.hpp"
#include "tokenizer/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  dsv3::fuzz::expect_clean([&] {
    const auto tok = dsv3::tok::Tokenizer::from_json(text);
    const auto ids = tok.encode("Hello, world! 123 \xe4\xbd\xa0\xe5\xa5\xbd", true);
    (void)tok.decode(ids, false);
    (void)tok.decode(ids, true);
    for (int32_t id : {0, 1, tok.vocab_size() - 1, tok.vocab_size(), -1}) (void)tok.id_to_token(id);
  });
  return 0;
}
