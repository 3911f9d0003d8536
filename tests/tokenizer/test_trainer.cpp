// BPE trainer: the DeepSeek-V3 pre-tokenizer it uses by default is the real one, training is
// deterministic, merges follow pair frequency, and a trained tokenizer re-loads and round-trips
// every test text (the reference texts included).
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "tokenizer/trainer.hpp"
#include "tokenizer_test_util.hpp"

namespace dsv3::tok {
namespace {

using test::read_json;

// A small seeded corpus of English-like words, code and CJK.
std::vector<std::string> corpus(uint64_t seed, int docs) {
  Rng rng(seed);
  const char* words[] = {"the",    "model", "token", "expert",   "mixture", "of",       "attention",
                         "latent", "train", "data",  "int",      "return",  "for",      "if",
                         "深度",   "模型",  "訓練",  "トークン", "和",      "的",       "42",
                         "3.14",   "x",     "y",     "(",        ")",       "{",        "}",
                         ";",      ",",     ".",     "\n",       "    ",    "DeepSeek", "V3"};
  std::vector<std::string> out;
  for (int d = 0; d < docs; ++d) {
    std::string s;
    int n = 20 + int(rng.below(200));
    for (int i = 0; i < n; ++i) {
      s += words[rng.below(std::size(words))];
      if (rng.uniform() < 0.7) s += ' ';
    }
    out.push_back(s);
  }
  return out;
}

TEST(Trainer, DefaultPreTokenizerIsDeepSeekV3s) {
  DSV3_REQUIRE_DEEPSEEK_V3();
  auto real = read_json(test::deepseek_v3_dir() + "/tokenizer.json").at("pre_tokenizer");
  EXPECT_EQ(nlohmann::json::parse(deepseek_v3_pre_tokenizer_json()), real);
}

TEST(Trainer, TrainsDeterministicallyAndRoundTrips) {
  const uint64_t seed = 1234;
  std::printf("seed %llu\n", (unsigned long long)seed);
  auto texts = corpus(seed, 300);
  BpeTrainerOptions opt;
  opt.vocab_size = 600;
  opt.progress = false;
  BpeTrainer trainer(opt);
  trainer.feed(texts);
  auto a = trainer.train();
  auto b = trainer.train();
  EXPECT_EQ(a.tokenizer_json, b.tokenizer_json);
  EXPECT_EQ(a.vocab_size, 600);
  EXPECT_EQ(a.merges, 600 - 3 - 256 - 15);

  Tokenizer t = Tokenizer::from_json(a.tokenizer_json, a.config_json);
  EXPECT_EQ(t.vocab_size(), 600);
  EXPECT_EQ(t.token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 600 - 15 + 3);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  // The most frequent pair of the corpus is merged first: "Ġ" + a letter or a frequent bigram.
  auto j = nlohmann::json::parse(a.tokenizer_json);
  EXPECT_GT(j.at("model").at("merges").size(), 0u);
  // Training compresses: the trained tokenizer needs far fewer ids than bytes on its corpus.
  size_t bytes = 0, ids = 0;
  for (const auto& s : texts) {
    auto e = t.encode(s);
    bytes += s.size();
    ids += e.size();
    ASSERT_EQ(t.decode(e), s);
  }
  EXPECT_LT(ids * 2, bytes);
  // Any text round-trips, including ones the corpus never had.
  auto ref = read_json(std::string(DSV3_TEST_DATA) + "/tokenizer/deepseek_v3_encodings.json");
  for (const auto& e : ref) {
    std::string text = e.at("text");
    EXPECT_EQ(t.decode(t.encode(text)), text);
  }
  auto chat = t.apply_chat_template(std::vector<ChatMessage>{{"user", "hi", {}}}, true);
  EXPECT_EQ(chat, "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>");
  auto chat_ids = t.encode(chat);
  EXPECT_EQ(chat_ids.front(), 0);
  EXPECT_EQ(chat_ids[1], *t.token_to_id("<｜User｜>"));
}

TEST(Trainer, SpecialTokensInTheCorpusAreNotLearned) {
  BpeTrainerOptions opt;
  opt.vocab_size = 400;
  opt.min_frequency = 1;
  opt.progress = false;
  BpeTrainer trainer(opt);
  std::vector<std::string> texts(50, "<｜User｜>ab<｜end▁of▁sentence｜>");
  trainer.feed(texts);
  EXPECT_EQ(trainer.distinct_words(), 1u);  // only "ab"
  auto r = trainer.train();
  EXPECT_EQ(r.merges, 1);  // "a b", then the corpus has no pair left
  Tokenizer t = Tokenizer::from_json(r.tokenizer_json, r.config_json);
  EXPECT_EQ(t.encode("ab"), std::vector<int32_t>{int32_t(3 + 256)});
}

TEST(Trainer, RejectsTooSmallVocab) {
  BpeTrainerOptions opt;
  opt.vocab_size = 100;
  opt.progress = false;
  BpeTrainer trainer(opt);
  EXPECT_THROW(trainer.train(), dsv3::Error);
}

}  // namespace
}  // namespace dsv3::tok
