// Incremental detokenization for streaming (issue 16): pushing a text's tokens one at a time
// releases exactly the text (each piece valid UTF-8, characters split across tokens held back
// until complete), and with stop strings exactly the text before the first stop string, however
// the stop string is split across tokens. The expected texts are the inputs themselves.
#include <gtest/gtest.h>

#include <filesystem>

#include "serve/text_stream.hpp"

using namespace dsv3;

namespace {
const std::string kTok = std::string(DSV3_SOURCE_DIR) + "/data/tokenizers/deepseek-v3";

// Loaded once for the suite (a few seconds).
const tok::Tokenizer& tokenizer() {
  static const tok::Tokenizer tk = tok::Tokenizer::load(kTok);
  return tk;
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

// Streams `ids`; returns the text released, checking every piece is valid UTF-8.
std::string stream(const tok::Tokenizer& tk, const std::vector<int32_t>& ids,
                   std::vector<std::string> stop, bool* stopped = nullptr) {
  serve::TextStream ts(tk, std::move(stop));
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = ts.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "piece of " << piece.size() << " bytes";
    out += piece;
  }
  out += ts.finish();
  EXPECT_EQ(out, ts.text());
  if (stopped) *stopped = ts.stopped();
  return out;
}

// The byte-level token of each byte of `s` (so multi-byte characters span several tokens).
std::vector<int32_t> byte_tokens(const tok::Tokenizer& tk, const std::string& s) {
  // GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, others to U+0100+.
  std::vector<int> map(256, -1);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    map[size_t(b)] = printable ? b : 256 + n++;
  }
  std::vector<int32_t> ids;
  for (unsigned char c : s) {
    const uint32_t cp = uint32_t(map[c]);
    std::string u;
    if (cp < 0x80) {
      u = std::string(1, char(cp));
    } else {
      u += char(0xC0 | (cp >> 6));
      u += char(0x80 | (cp & 0x3F));
    }
    const auto id = tk.token_to_id(u);
    EXPECT_TRUE(id) << "no byte token for " << int(c);
    if (id) ids.push_back(*id);
  }
  return ids;
}
}  // namespace

TEST(TextStream, ReleasesExactlyTheText) {
  if (!std::filesystem::exists(kTok + "/tokenizer.json")) GTEST_SKIP() << "no " << kTok;
  const auto& tk = tokenizer();
  const std::string text = "Grüße, 世界! 🙂 done. Ünïcödé ∑ and \xF0\x9F\x98\x80 end";
  EXPECT_EQ(stream(tk, tk.encode(text), {}), text);
  EXPECT_EQ(stream(tk, byte_tokens(tk, text), {}), text);  // every character split into bytes
}

TEST(TextStream, StopsBeforeTheFirstStopString) {
  if (!std::filesystem::exists(kTok + "/tokenizer.json")) GTEST_SKIP() << "no " << kTok;
  const auto& tk = tokenizer();
  const std::string text = "one two <END> three 世界 stop four";
  for (bool bytes : {false, true}) {
    const auto ids = bytes ? byte_tokens(tk, text) : tk.encode(text);
    bool stopped = false;
    EXPECT_EQ(stream(tk, ids, {"<END>"}, &stopped), "one two ");
    EXPECT_TRUE(stopped);
    EXPECT_EQ(stream(tk, ids, {"stop", "世界"}, &stopped), "one two <END> three ");
    EXPECT_TRUE(stopped);
    // A stop string that never completes: its prefix at the end is released by finish().
    EXPECT_EQ(stream(tk, ids, {"four!"}, &stopped), text);
    EXPECT_FALSE(stopped);
    EXPECT_EQ(stream(tk, ids, {"absent"}, &stopped), text);
  }
}

TEST(TextStream, SpecialTokensGiveNoText) {
  if (!std::filesystem::exists(kTok + "/tokenizer.json")) GTEST_SKIP() << "no " << kTok;
  const auto& tk = tokenizer();
  std::vector<int32_t> ids = tk.encode("hello");
  ids.push_back(*tk.eos_id());
  EXPECT_EQ(stream(tk, ids, {}), "hello");
}
