// Unit tests of the tokenizer's parts: UTF-8 repair (maximal subparts), the byte-level alphabet,
// Oniguruma-to-PCRE2 regex rewriting and iteration, the BPE memo, the chat template against
// @huggingface/jinja renderings, error messages for unsupported components, and the `dsv3 tokenize`
// command.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/byte_level.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/regex.hpp"
#include "tokenizer/trainer.hpp"
#include "tokenizer/utf8.hpp"
#include "tokenizer_test_util.hpp"

namespace dsv3::tok {
namespace {

TEST(Utf8, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("\xff"), "\uFFFD");
  EXPECT_EQ(utf8_lossy("\xe2\x82"), "\uFFFD");  // truncated 3-byte sequence: one
  EXPECT_EQ(utf8_lossy("\xe2\x82\x41"),
            "\uFFFD"
            "A");                                               // prefix then ASCII
  EXPECT_EQ(utf8_lossy("\xc0\x80"), "\uFFFD\uFFFD");            // overlong: each byte
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98"), "\uFFFD");
  EXPECT_EQ(utf8_lossy("\xf4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // > U+10FFFF
  EXPECT_TRUE(utf8_is_valid("\xf0\x9f\x98\x80"));
  EXPECT_FALSE(utf8_is_valid("\xf0\x9f\x98"));
}

TEST(ByteLevel, AlphabetRoundTripsEveryByte) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  std::string enc = byte_level_encode(all), dec;
  ASSERT_TRUE(byte_level_decode(enc, dec));
  EXPECT_EQ(dec, all);
  EXPECT_EQ(byte_level_encode(" "), "\u0120");   // Ġ
  EXPECT_EQ(byte_level_encode("\n"), "\u010A");  // Ċ
  std::string out;
  EXPECT_FALSE(byte_level_decode("<｜User｜>", out));
  EXPECT_TRUE(out.empty());
}

TEST(Regex, RewritesOnigurumaEscapes) {
  EXPECT_EQ(Regex::translate("\\s+"), "[\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}]+");
  EXPECT_EQ(Regex::translate("[^\\s\\p{L}]"), "[^\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}\\p{L}]");
  EXPECT_EQ(Regex::translate("\\u00e9"), "\\x{00e9}");
  EXPECT_THROW(Regex::translate("[\\S]"), dsv3::Error);
  EXPECT_THROW(Regex("(unclosed"), dsv3::Error);
  // Oniguruma's \s has NEL and not U+180E (PCRE2's own \s is the other way round).
  Regex ws("\\s");
  size_t b, e;
  EXPECT_TRUE(ws.search("\u0085", 0, &b, &e));
  EXPECT_FALSE(ws.search("\u180E", 0, &b, &e));
}

TEST(Regex, FindIterSkipsEmptyMatchAfterMatch) {
  Regex re("a*");
  std::vector<std::pair<size_t, size_t>> got;
  re.find_iter("baa", [&](size_t b, size_t e) { got.emplace_back(b, e); });
  // Oniguruma: (0,0), then (1,3); the empty match at 3 right after it is skipped.
  std::vector<std::pair<size_t, size_t>> want{{0, 0}, {1, 3}};
  EXPECT_EQ(got, want);
}

TEST(Regex, HugeRunsDoNotOverflowTheJitStack) {
  Regex re("\\s+(?!\\S)|\\s+");
  std::string s(1 << 20, ' ');
  s += "x";
  size_t b, e;
  ASSERT_TRUE(re.search(s, 0, &b, &e));
  EXPECT_EQ(b, 0u);
  EXPECT_EQ(e, s.size() - 2);
}

TEST(Bpe, MemoAgreesWithFreshEncoding) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  // Seeded random CJK/Latin runs (long ones take the heap merge loop): encoding on a fresh memo
  // and after the memo has seen the pieces gives the same ids, and decoding gives the text back.
  const uint64_t seed = 77;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const char* parts[] = {"深度", "求索", "模型", "abc", "tion", "的", "ing", "é", "😀"};
  for (int t = 0; t < 200; ++t) {
    std::string s;
    int n = 1 + int(rng.below(40));
    for (int i = 0; i < n; ++i) s += parts[rng.below(std::size(parts))];
    auto ids = ds->encode(s);
    EXPECT_EQ(ds->decode(ids), s);
    // A piece run alone through encode must equal its appearance after a cache-filling text.
    (void)ds->encode(s + " " + s);
    EXPECT_EQ(ds->encode(s), ids) << s;
  }
}

TEST(Bpe, CacheGrowsSpillsAndClearsAtItsLimit) {
  // 30,000 distinct keys of 1..60 bytes with 1..9 ids (inline and spilled keys and ids) go into
  // a memo limited to 20,000 entries: its index doubles several times, then it clears once full.
  // Every key must read back its own ids while present, and nothing else.
  const uint64_t seed = 78;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const size_t kLimit = 20000, kKeys = 30000;
  BpeCache cache(kLimit);
  std::vector<std::string> keys;
  std::vector<std::vector<int32_t>> ids;
  for (size_t i = 0; i < kKeys; ++i) {
    std::string k = std::to_string(i) + ":";
    const size_t len = 1 + rng.below(60);
    while (k.size() < len) k += char('a' + rng.below(26));
    std::vector<int32_t> v(1 + rng.below(9));
    for (auto& x : v) x = int32_t(rng.below(1u << 30));
    keys.push_back(k);
    ids.push_back(v);
  }
  auto check = [&](size_t i, bool present) {
    std::span<const int32_t> got;
    const bool hit = cache.find(keys[i], hash_bytes(keys[i]), &got);
    ASSERT_EQ(hit, present) << "key " << i;
    if (hit) {
      ASSERT_EQ(std::vector<int32_t>(got.begin(), got.end()), ids[i]) << "key " << i;
    }
  };
  for (size_t i = 0; i < kLimit; ++i) {
    cache.insert(keys[i], hash_bytes(keys[i]), ids[i]);
    if (i % 997 == 0)
      for (size_t j = 0; j <= i; j += 13) check(j, true);
  }
  for (size_t i = 0; i < kLimit; ++i) check(i, true);
  check(kLimit, false);
  // Full: the next insert starts over.
  for (size_t i = kLimit; i < kKeys; ++i) cache.insert(keys[i], hash_bytes(keys[i]), ids[i]);
  for (size_t i = 0; i < kLimit; i += 7) check(i, false);
  for (size_t i = kLimit; i < kKeys; ++i) check(i, true);
}

TEST(Bpe, PieceOfUnknownCharactersWithoutUnkGivesNoIds) {
  // No byte-level alphabet and no unk_token: characters missing from the vocab are dropped, so a
  // piece can leave no symbols at all, and the merge loop must cope with zero or one.
  const Bpe bpe = Bpe::from_tokens({"a", "b", "ab"}, {{"a", "b"}});
  std::vector<int32_t> out;
  bpe.encode_uncached("zz", false, out);
  EXPECT_TRUE(out.empty());
  bpe.encode_uncached("zaz", false, out);
  EXPECT_EQ(out, std::vector<int32_t>({0}));
  out.clear();
  bpe.encode_uncached("abz", false, out);
  EXPECT_EQ(out, std::vector<int32_t>({2}));
}

// Random raw-byte pieces (characters from whole Unicode blocks, ASCII, stray and truncated
// UTF-8 bytes) encode to the same ids from whole characters as from single bytes.
// A piece's characters come from one block per piece, the first one being `chars` (a corpus's).
void expect_whole_chars_agree(const Bpe& bpe, uint64_t seed, int pieces,
                              const std::vector<uint32_t>& chars) {
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const uint32_t blocks[][2] = {{0, 0},           {0x4E00, 0x9FFF}, {0x3040, 0x30FF},
                                {0xAC00, 0xD7A3}, {0x0400, 0x04FF}, {0x00A0, 0x00FF},
                                {0x0370, 0x03FF}, {0x0600, 0x06FF}, {0x3000, 0x303F},
                                {0xFF00, 0xFFEF}, {0x0080, 0xFFFF}};
  std::vector<int32_t> fast, ref;
  for (int t = 0; t < pieces; ++t) {
    const size_t block = rng.below(std::size(blocks));
    const auto& blk = blocks[block];
    std::string piece;
    const int n = 1 + int(rng.below(t % 10 == 0 ? 200 : 24));  // some take the heap loop
    for (int i = 0; i < n; ++i) {
      const double u = rng.uniform();
      if (u < 0.80) {
        uint32_t cp = block == 0 ? chars[rng.below(chars.size())]
                                 : blk[0] + uint32_t(rng.below(blk[1] - blk[0] + 1));
        if (cp >= 0xD800 && cp < 0xE000) cp = 0x4E00;
        utf8_append(piece, cp);
      } else if (u < 0.92) {
        piece += char('a' + rng.below(26));
      } else if (u < 0.96) {
        piece += char(0x80 + rng.below(64));  // a stray continuation byte
      } else {
        std::string c;
        utf8_append(c, 0x4E00 + uint32_t(rng.below(0x5000)));
        piece += c.substr(0, 1 + rng.below(2));  // a truncated character
      }
    }
    fast.clear();
    ref.clear();
    bpe.encode_uncached(piece, true, fast);
    bpe.encode_reference(piece, true, ref);
    ASSERT_EQ(fast, ref) << "piece " << t << ": " << utf8_lossy(piece);
  }
}

TEST(Bpe, WholeCharacterStartMatchesByteStart) {
  // A hand-made vocabulary where one byte merge reaches across two characters early: "深"
  // (E6 B7 B1) ends with B1, "度" (E5 BA A6) and "大" (E5 A4 A7) start with E5, and (B1, E5) has
  // the lowest rank, so none of them may start whole, while "中" (E4 B8 AD), whose edge bytes
  // merge across nothing, may.
  const auto& alpha = byte_level_alphabet();
  auto str = [&](std::initializer_list<int> bytes) {
    std::string s;
    for (int b : bytes) s += alpha.byte_to_utf8[b];
    return s;
  };
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(alpha.byte_to_utf8[b]);
  std::vector<std::pair<std::string, std::string>> merges = {
      {str({0xB1}), str({0xE5})},
      {str({0xE6}), str({0xB7})},
      {str({0xE6, 0xB7}), str({0xB1})},
      {str({0xE5}), str({0xBA})},
      {str({0xE5, 0xBA}), str({0xA6})},
      {str({0xE5}), str({0xA4})},
      {str({0xE4}), str({0xB8})},
      {str({0xE4, 0xB8}), str({0xAD})},
      {str({0xE4, 0xB8, 0xAD}), str({0xE4, 0xB8, 0xAD})}};
  for (const auto& [a, b] : merges)
    if (std::find(tokens.begin(), tokens.end(), a + b) == tokens.end()) tokens.push_back(a + b);
  const Bpe toy = Bpe::from_tokens(tokens, merges);
  EXPECT_EQ(toy.whole_char_counts()[0], 1u);  // only 中
  EXPECT_EQ(toy.whole_char_counts()[1], 1u);
  std::vector<int32_t> fast, ref;
  for (const char* text : {"深度", "中中", "度中深", "中深中度大", "a中", "中\x80"}) {
    fast.clear();
    ref.clear();
    toy.encode_uncached(text, true, fast);
    toy.encode_reference(text, true, ref);
    EXPECT_EQ(fast, ref) << text;
  }
  // 深度: B1+E5 merges first and the two characters never become tokens.
  fast.clear();
  toy.encode_uncached("深度", true, fast);
  EXPECT_EQ(fast.size(), 4u);
  expect_whole_chars_agree(toy, 80, 2000, {0x4E2D, 0x5927, 0x5EA6, 0x6DF1});

  // Condition (b): a merge that uses the whole "中" ranks before the merges that make it, so in
  // "za中" the byte run merges "za" while 中 is incomplete and gives [za][中], where starting
  // from 中 would merge "a中" first and give [z][a中].
  const std::string zhong = str({0xE4, 0xB8, 0xAD});
  std::vector<std::string> tokens_b(tokens.begin(), tokens.begin() + 256);
  const std::vector<std::pair<std::string, std::string>> merges_b = {
      {"a", zhong}, {str({0xE4}), str({0xB8})}, {"z", "a"}, {str({0xE4, 0xB8}), str({0xAD})}};
  for (const auto& [a, b] : merges_b) tokens_b.push_back(a + b);
  const Bpe toy_b = Bpe::from_tokens(tokens_b, merges_b);
  EXPECT_EQ(toy_b.whole_char_counts()[0], 0u);
  EXPECT_EQ(toy_b.whole_char_counts()[1], 1u);  // "a" cannot stand left of 中 in a CJK run
  fast.clear();
  ref.clear();
  toy_b.encode_uncached("za中", true, fast);
  toy_b.encode_reference("za中", true, ref);
  EXPECT_EQ(fast, ref);
  EXPECT_EQ(ref, std::vector<int32_t>({256 + 2, 256 + 3}));  // [za][中]

  // A tokenizer trained on short CJK runs of 300 characters (frequent ones complete early, and
  // byte merges across characters compete with them).
  BpeTrainerOptions opt;
  opt.vocab_size = 1500;
  opt.progress = false;
  BpeTrainer trainer(opt);
  std::vector<std::string> texts;
  Rng rng(81);
  std::vector<uint32_t> chars;
  for (int i = 0; i < 300; ++i) chars.push_back(0x4E00 + uint32_t(rng.below(0x51A6)));
  for (int d = 0; d < 200; ++d) {
    std::string s;
    for (int i = 0; i < 100; ++i) {
      const int run = 1 + int(rng.below(3));
      for (int k = 0; k < run; ++k) {
        const double u = rng.uniform();
        utf8_append(s, chars[size_t(300 * u * u * u)]);  // skewed towards the first ones
      }
      s += rng.below(2) ? " " : "，";
    }
    texts.push_back(s);
  }
  trainer.feed(texts);
  const Bpe trained =
      Bpe::from_json(nlohmann::json::parse(trainer.train().tokenizer_json).at("model"));
  std::printf("trained: %zu whole characters (%zu in CJK runs)\n", trained.whole_char_counts()[0],
              trained.whole_char_counts()[1]);
  expect_whole_chars_agree(trained, 82, 3000, chars);

  DSV3_REQUIRE_DEEPSEEK_V3();
  const Bpe real =
      Bpe::from_json(test::read_json(test::deepseek_v3_dir() + "/tokenizer.json").at("model"));
  std::printf("DeepSeek-V3: %zu whole characters (%zu in CJK runs)\n", real.whole_char_counts()[0],
              real.whole_char_counts()[1]);
  EXPECT_GT(real.whole_char_counts()[1], real.whole_char_counts()[0]);
  expect_whole_chars_agree(real, 83, 20000, {0x6DF1, 0x5EA6, 0x6C42, 0x7D22, 0x6A21, 0x578B});
}

TEST(Bpe, MergeLoopsMatchTextbookBpe) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  // Single-piece texts (a CJK run, a run of Latin letters) of 1..140 characters, so both merge
  // loops (up to 128 symbols and beyond) run, against the textbook algorithm on strings: merge
  // the leftmost pair of lowest rank until none is left, then look the strings up.
  const uint64_t seed = 79;
  std::printf("seed %llu\n", (unsigned long long)seed);
  const auto j = test::read_json(test::deepseek_v3_dir() + "/tokenizer.json");
  std::map<std::pair<std::string, std::string>, size_t> rank;
  size_t r = 0;
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    rank.emplace(std::make_pair(s.substr(0, sp), s.substr(sp + 1)), r++);
  }
  const auto& vocab = j["model"]["vocab"];
  auto textbook = [&](const std::string& text) {
    const std::string mapped = byte_level_encode(text);
    std::vector<std::string> sym;
    for (size_t i = 0; i < mapped.size();) {
      const size_t len = utf8_lead_length(static_cast<unsigned char>(mapped[i]));
      sym.push_back(mapped.substr(i, len));
      i += len;
    }
    for (;;) {
      size_t best = SIZE_MAX, best_rank = SIZE_MAX;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = rank.find({sym[i], sym[i + 1]});
        if (it != rank.end() && it->second < best_rank) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best == SIZE_MAX) break;
      sym[best] += sym[best + 1];
      sym.erase(sym.begin() + std::ptrdiff_t(best) + 1);
    }
    std::vector<int32_t> ids;
    for (const auto& s : sym) ids.push_back(vocab.at(s).get<int32_t>());
    return ids;
  };
  const char* cjk[] = {"深", "度", "求", "索", "模", "型", "的", "是", "在", "中", "国", "人",
                       "大", "学", "生", "语", "言", "数", "据", "の", "は", "カ", "タ"};
  Rng rng(seed);
  for (int t = 0; t < 120; ++t) {
    const int n = 1 + int(rng.below(140));
    std::string text;
    for (int i = 0; i < n; ++i)
      text += t % 2 ? std::string(1, char('a' + rng.below(26))) : cjk[rng.below(std::size(cjk))];
    ASSERT_EQ(ds->encode(text), textbook(text)) << text;
  }
}

TEST(ChatTemplate, MatchesJinjaRenderings) {
  auto g = test::read_json(test::golden_dir() + "/deepseek_v3_chat_cases.json");
  ASSERT_GE(g.at("cases").size(), 16u);
  for (const auto& c : g.at("cases")) {
    auto messages = chat_messages_from_json(c.at("messages"));
    EXPECT_EQ(render_deepseek_v3_chat(messages, "<｜begin▁of▁sentence｜>",
                                      c.at("add_generation_prompt").get<bool>()),
              c.at("text").get<std::string>())
        << c.at("messages").dump();
  }
}

TEST(ChatTemplate, RecognisesTheRealTemplateAndEncodesTurnMarkers) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  EXPECT_TRUE(is_deepseek_v3_chat_template(ds->config().chat_template));
  EXPECT_FALSE(is_deepseek_v3_chat_template("{{ messages }}"));
  std::vector<ChatMessage> m{{"system", "Be brief.", {}}, {"user", "Hi", {}}};
  std::string text = ds->apply_chat_template(m, true);
  EXPECT_EQ(text, "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>");
  auto ids = ds->encode(text);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids[ids.size() - 1], 128804);  // <｜Assistant｜>
  EXPECT_EQ(ds->config().bos_token, "<｜begin▁of▁sentence｜>");
  EXPECT_TRUE(ds->config().add_bos_token);
  EXPECT_EQ(ds->bos_id(), 0);
  EXPECT_EQ(ds->eos_id(), 1);
  EXPECT_EQ(ds->vocab_size(), 128815);
}

TEST(Loader, UnsupportedComponentsAreNamed) {
  auto base = [] {
    nlohmann::json j;
    j["model"] = {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", nlohmann::json::array()}};
    return j;
  };
  auto message = [](const nlohmann::json& j) {
    try {
      Tokenizer::from_json(j.dump());
    } catch (const dsv3::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto j = base();
  j["normalizer"] = {{"type", "NFKC"}};
  EXPECT_NE(message(j).find("NFKC"), std::string::npos);
  j = base();
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_NE(message(j).find("BertPreTokenizer"), std::string::npos);
  j = base();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(message(j).find("WordPiece"), std::string::npos);
  j = base();
  j["model"]["type"] = "Unigram";
  EXPECT_NE(message(j).find("Unigram"), std::string::npos);
  j = base();
  j["model"]["merges"] = {"a b"};
  EXPECT_NE(message(j).find("missing from the vocab"), std::string::npos);
  EXPECT_EQ(message(base()), "no error");
}

TEST(Loader, EmptyInputAndUnknownIds) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  EXPECT_TRUE(ds->encode("").empty());
  EXPECT_EQ(ds->encode("", true), std::vector<int32_t>{0});
  EXPECT_EQ(ds->decode(std::vector<int32_t>{-5, 999999, 19923}), "Hello");
}

TEST(Cli, TokenizeJsonAndPlainModes) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  if (!std::filesystem::exists(DSV3_BIN)) GTEST_SKIP() << "dsv3 binary not built at " << DSV3_BIN;
  // Per process: concurrent test runs on one machine shared the directory and raced.
  auto dir =
      std::filesystem::temp_directory_path() / ("dsv3_test_tokenize_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  io::atomic_write((dir / "in.json").string(), R"(["Hello world!", "", "深度求索"])");
  std::string cmd = std::string(DSV3_BIN) + " tokenize --tokenizer " + test::deepseek_v3_dir() +
                    " --input " + (dir / "in.json").string() + " --output " +
                    (dir / "out.json").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto out = test::read_json((dir / "out.json").string());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].get<std::vector<int32_t>>(), (std::vector<int32_t>{19923, 2058, 3}));
  EXPECT_TRUE(out[1].empty());
  EXPECT_EQ(out[2].get<std::vector<int32_t>>(), ds->encode("深度求索"));
  std::string plain = std::string(DSV3_BIN) + " tokenize --tokenizer " + test::deepseek_v3_dir() +
                      " --add-special-tokens 'Hello world!' > " + (dir / "plain.txt").string();
  ASSERT_EQ(std::system(plain.c_str()), 0);
  EXPECT_NE(io::read_file((dir / "plain.txt").string()).find("ids: [0,19923,2058,3]"),
            std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Cli, TrainTokenizerWritesALoadableTokenizer) {
  if (!std::filesystem::exists(DSV3_BIN)) GTEST_SKIP() << "dsv3 binary not built at " << DSV3_BIN;
  auto dir = std::filesystem::temp_directory_path() / "dsv3_test_train_tokenizer";
  std::filesystem::create_directories(dir);
  std::string text;
  for (int i = 0; i < 200; ++i)
    text += "the quick brown fox " + std::to_string(i) + " 狐狸跳过了\n";
  io::atomic_write((dir / "corpus.txt").string(), text);
  std::string cmd = std::string(DSV3_BIN) + " train-tokenizer --quiet --vocab-size 400 --data " +
                    (dir / "corpus.txt").string() + " --out " + (dir / "tok").string() +
                    " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  Tokenizer t = Tokenizer::load((dir / "tok").string());
  // This small corpus runs out of pairs seen twice before 400 tokens.
  EXPECT_GT(t.vocab_size(), 3 + 256 + 15 + 20);
  EXPECT_LE(t.vocab_size(), 400);
  EXPECT_EQ(t.decode(t.encode(text)), text);
  EXPECT_LT(t.encode(text).size() * 3, text.size());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsv3::tok

namespace dsv3::tok {
namespace {

// A wrong type anywhere in tokenizer.json or tokenizer_config.json names the file and the JSON
// pointer of the value (issue: raw "[json.exception.type_error.302] type must be string" before).
TEST(TokenizerJson, TypeErrorsNameTheFileAndTheKey) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  const auto good = test::read_json(test::deepseek_v3_dir() + "/tokenizer.json");
  const std::string config = io::read_file(test::deepseek_v3_dir() + "/tokenizer_config.json");
  const auto dir = std::filesystem::temp_directory_path() / "dsv3_test_tokenizer_json_errors";
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "tokenizer.json").string();
  auto expect_error = [&](const nlohmann::json& tok, const std::string& cfg,
                          const std::string& pointer) {
    io::atomic_write(file, tok.dump());
    io::atomic_write((dir / "tokenizer_config.json").string(), cfg);
    try {
      Tokenizer::load(dir.string());
      ADD_FAILURE() << "no error for a wrong type at " << pointer;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(file), std::string::npos) << msg;
      EXPECT_NE(msg.find("at " + pointer + ":"), std::string::npos) << msg;
      EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << msg;
    }
  };
  auto j = good;
  j["model"]["merges"][7] = 5;
  expect_error(j, config, "/model/merges/7");
  j = good;
  j["added_tokens"][2]["content"] = 7;
  expect_error(j, config, "/added_tokens/2/content");
  j = good;
  j["decoder"]["type"] = nullptr;
  expect_error(j, config, "/decoder/type");
  auto c = nlohmann::json::parse(config);
  c["add_bos_token"] = "yes";
  expect_error(good, c.dump(), "/add_bos_token");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsv3::tok
