// Data pipeline tests (train/data.hpp): document splitting rules, input validation errors (raised
// before any work), token shards (round trip, multi-shard, invalidation on corpus or tokenizer
// change, rebuild of a corrupt shard), the validation hold-out (deterministic, disjoint,
// complete) and the packing sampler (deterministic, contiguous windows, exact resume).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/data.hpp"
#include "train/temp_dir.hpp"

using namespace dsv3;
using namespace dsv3::train;
namespace fs = std::filesystem;

namespace {

struct TempDir : dsv3::train::testing::TempDir {
  TempDir() : dsv3::train::testing::TempDir("data") {}
};

void write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
    return;
  }
  ADD_FAILURE() << "expected dsv3::Error";
}

constexpr int32_t kBos = 256, kEos = 257, kVocab = 258;

// Byte-level stand-in for the tokenizer: one token per byte. Counts its calls.
std::atomic<int64_t> g_encoded{0};
std::vector<int32_t> encode_bytes(std::string_view s) {
  ++g_encoded;
  std::vector<int32_t> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

// A fortune-style corpus of n entries with varied lengths, seeded.
std::string fortune_corpus(int n, uint64_t seed) {
  Rng rng(seed);
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += "entry " + std::to_string(i) + ":";
    int words = 3 + int(rng.below(20));
    for (int w = 0; w < words; ++w) s += " w" + std::to_string(rng.below(1000));
    s += "\n%\n";
  }
  return s;
}

DataOptions options(const TempDir& t, std::vector<std::string> inputs) {
  DataOptions o;
  o.inputs = std::move(inputs);
  o.cache_dir = t / "cache";
  o.tokenizer_id = "bytes-v1";
  o.vocab_size = kVocab;
  o.eos_id = kEos;
  o.val_fraction = 0.05;
  o.seed = 1234;
  o.progress = false;
  return o;
}

std::vector<std::string> strs(const std::vector<std::string_view>& v) {
  return {v.begin(), v.end()};
}

}  // namespace

TEST(Data, SplitDocumentsRules) {
  std::string fortune = "first\nline two\n%\n\nsecond\n%\n%\nthird  \n";
  EXPECT_EQ(strs(split_documents(fortune, DocSplit::Fortune)),
            (std::vector<std::string>{"first\nline two", "second", "third"}));
  EXPECT_EQ(strs(split_documents(fortune, DocSplit::Auto)),
            strs(split_documents(fortune, DocSplit::Fortune)));
  std::string prose = "\n\nPara one\nstill one.\n \t\nPara two.\r\n\r\n\r\nPara three";
  EXPECT_EQ(strs(split_documents(prose, DocSplit::Paragraph)),
            (std::vector<std::string>{"Para one\nstill one.", "Para two.", "Para three"}));
  EXPECT_EQ(strs(split_documents(prose, DocSplit::Auto)),
            strs(split_documents(prose, DocSplit::Paragraph)));
  EXPECT_EQ(split_documents(prose, DocSplit::File).size(), 1u);
  // Leading indentation inside a document is kept (ASCII art); "%\r" separates too.
  EXPECT_EQ(strs(split_documents("  /\\\n /  \\\r\n%\r\nx", DocSplit::Fortune)),
            (std::vector<std::string>{"  /\\\n /  \\", "x"}));
  EXPECT_TRUE(split_documents("\n \n%\n", DocSplit::Auto).empty());
  EXPECT_EQ(doc_split_from_name("fortune"), DocSplit::Fortune);
  expect_error([] { doc_split_from_name("lines"); }, {"lines", "auto"});
}

TEST(Data, BadInputsFailClearly) {
  TempDir t;
  write(t / "ok.txt", "hello\n");
  write(t / "empty.txt", "");
  write(t / "blank.txt", " \n\n\t\n");
  write(t / "latin1.txt", "line one\ncaf\xe9 au lait\n");
  write(t / "overlong.txt", "a\xc0\xafz");
  write(t / "surrogate.txt", "a\xed\xa0\x80z");
  write(t / "nul.txt", std::string("ab\0cd", 5));
  fs::create_directories(t / "emptydir/.hidden");
  write(t / "emptydir/.hidden/x.txt", "hidden\n");
  write(t / "emptydir/x.dat", "index");
  expect_error([&] { list_input_files({t / "missing.txt"}); }, {"missing.txt", "does not exist"});
  expect_error([&] { list_input_files({t / "empty.txt"}); }, {"empty.txt", "empty"});
  expect_error([&] { list_input_files({t / "blank.txt"}); }, {"blank.txt", "empty"});
  expect_error([&] { list_input_files({t / "latin1.txt"}); },
               {"latin1.txt", "not UTF-8", "offset 12", "line 2"});
  expect_error([&] { list_input_files({t / "overlong.txt"}); }, {"overlong.txt", "offset 1"});
  expect_error([&] { list_input_files({t / "surrogate.txt"}); }, {"surrogate.txt", "offset 1"});
  expect_error([&] { list_input_files({t / "nul.txt"}); }, {"nul.txt", "offset 2"});
  expect_error([&] { list_input_files({t / "emptydir"}); }, {"emptydir", "no text files"});
  expect_error([&] { list_input_files({}); }, {"no training data"});
  EXPECT_EQ(list_input_files({t / "ok.txt"}).size(), 1u);
  // load_dataset validates every file before it tokenizes anything.
  g_encoded = 0;
  expect_error(
      [&] {
        load_dataset(options(t, {t / "ok.txt", t / "latin1.txt"}), encode_bytes);
      },
      {"latin1.txt"});
  EXPECT_EQ(g_encoded.load(), 0);
}

TEST(Data, DirectoryWalkSkipsHiddenIndexAndSymlinks) {
  TempDir t;
  write(t / "corpus/b", "bee\n%\n");
  write(t / "corpus/a", "ay\n%\n");
  write(t / "corpus/sub/c.txt", "sea\n");
  write(t / "corpus/a.dat", std::string("\x00\x01\xff", 3));  // strfile index: binary
  write(t / "corpus/.git/config", "x");
  fs::create_symlink("a", t / "corpus/a.u8");
  auto files = list_input_files({t / "corpus"});
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(fs::path(files[0]).filename(), "a");
  EXPECT_EQ(fs::path(files[1]).filename(), "b");
  EXPECT_EQ(fs::path(files[2]).filename(), "c.txt");
}

TEST(Data, ShardsRoundTripAndReuse) {
  const uint64_t seed = 7;
  std::printf("corpus seed %llu\n", (unsigned long long)seed);
  TempDir t;
  write(t / "a.txt", fortune_corpus(300, seed));
  write(t / "b.txt", "A paragraph.\n\nAnother one\nwith two lines.\n");
  DataOptions o = options(t, {t / "a.txt", t / "b.txt"});
  o.shard_tokens = 2000;  // several shards
  g_encoded = 0;
  Dataset d1 = load_dataset(o, encode_bytes);
  EXPECT_FALSE(d1.from_cache);
  EXPECT_EQ(d1.num_docs, 302);
  EXPECT_EQ(g_encoded.load(), 302);
  int shards = 0;
  for (auto& e : fs::directory_iterator(d1.shard_dir)) shards += e.path().extension() == ".bin";
  EXPECT_GT(shards, 3);

  g_encoded = 0;
  Dataset d2 = load_dataset(o, encode_bytes);
  EXPECT_TRUE(d2.from_cache);
  EXPECT_EQ(g_encoded.load(), 0);
  EXPECT_EQ(d2.shard_dir, d1.shard_dir);
  EXPECT_EQ(d2.train.tokens, d1.train.tokens);
  EXPECT_EQ(d2.val.tokens, d1.val.tokens);
  EXPECT_EQ(d2.train.doc_starts, d1.train.doc_starts);

  // The tokens are exactly the documents' bytes, each followed by EOS, in corpus order.
  std::string b_text = "A paragraph.";
  auto& tr = d1.train;
  bool found = false;
  for (size_t i = 0; i < tr.doc_ids.size(); ++i)
    if (tr.doc_ids[i] == 300) {
      std::vector<int32_t> want(b_text.begin(), b_text.end());
      want.push_back(kEos);
      int64_t s = tr.doc_starts[i];
      EXPECT_EQ(
          std::vector<int32_t>(tr.tokens.begin() + s, tr.tokens.begin() + s + int64_t(want.size())),
          want);
      found = true;
    }
  if (!found) {  // held out: then it is in val
    EXPECT_NE(std::find(d1.val.doc_ids.begin(), d1.val.doc_ids.end(), 300), d1.val.doc_ids.end());
  }
}

TEST(Data, CacheInvalidatesOnCorpusOrTokenizerChange) {
  TempDir t;
  write(t / "a.txt", fortune_corpus(50, 3));
  DataOptions o = options(t, {t / "a.txt"});
  Dataset d1 = load_dataset(o, encode_bytes);
  EXPECT_FALSE(d1.from_cache);
  EXPECT_TRUE(load_dataset(o, encode_bytes).from_cache);

  write(t / "a.txt", fortune_corpus(50, 3) + "one more entry\n%\n");
  Dataset d2 = load_dataset(o, encode_bytes);
  EXPECT_FALSE(d2.from_cache);
  EXPECT_NE(d2.shard_dir, d1.shard_dir);
  EXPECT_EQ(d2.num_docs, 51);

  o.tokenizer_id = "bytes-v2";
  Dataset d3 = load_dataset(o, encode_bytes);
  EXPECT_FALSE(d3.from_cache);
  EXPECT_NE(d3.shard_dir, d2.shard_dir);

  o.split = DocSplit::File;
  o.val_fraction = 0;  // one file is one document: nothing to hold out
  EXPECT_FALSE(load_dataset(o, encode_bytes).from_cache);
}

TEST(Data, CorruptShardIsRebuilt) {
  TempDir t;
  write(t / "a.txt", fortune_corpus(80, 11));
  DataOptions o = options(t, {t / "a.txt"});
  Dataset d1 = load_dataset(o, encode_bytes);
  std::string shard = (fs::path(d1.shard_dir) / "shard-00000.bin").string();
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c = 0x55;
    f.write(&c, 1);
  }
  Dataset d2 = load_dataset(o, encode_bytes);
  EXPECT_FALSE(d2.from_cache);
  EXPECT_EQ(d2.train.tokens, d1.train.tokens);
  fs::resize_file(shard, 100);
  Dataset d3 = load_dataset(o, encode_bytes);
  EXPECT_FALSE(d3.from_cache);
  EXPECT_EQ(d3.train.tokens, d1.train.tokens);
  EXPECT_TRUE(load_dataset(o, encode_bytes).from_cache);
}

TEST(Data, ValidationSplitDeterministicAndDisjoint) {
  TempDir t;
  write(t / "a.txt", fortune_corpus(400, 5));
  DataOptions o = options(t, {t / "a.txt"});
  o.bos_id = kBos;
  o.val_fraction = 0.03;
  for (uint64_t seed : {1ull, 2ull, 99ull}) {
    std::printf("split seed %llu\n", (unsigned long long)seed);
    o.seed = seed;
    Dataset a = load_dataset(o, encode_bytes), b = load_dataset(o, encode_bytes);
    EXPECT_EQ(a.val.doc_ids, b.val.doc_ids);
    EXPECT_EQ(a.val.tokens, b.val.tokens);
    EXPECT_EQ(a.val.doc_ids.size(), 12u);
    std::set<int64_t> all(a.train.doc_ids.begin(), a.train.doc_ids.end());
    for (int64_t d : a.val.doc_ids) EXPECT_TRUE(all.insert(d).second) << "doc " << d << " in both";
    EXPECT_EQ(all.size(), 400u);
    // Every document is framed BOS ... EOS.
    for (const TokenSplit* s : {&a.train, &a.val})
      for (size_t i = 0; i < s->doc_starts.size(); ++i) {
        int64_t end =
            i + 1 < s->doc_starts.size() ? s->doc_starts[i + 1] : int64_t(s->tokens.size());
        EXPECT_EQ(s->tokens[size_t(s->doc_starts[i])], kBos);
        EXPECT_EQ(s->tokens[size_t(end - 1)], kEos);
      }
  }
  o.seed = 1;
  auto v1 = load_dataset(o, encode_bytes).val.doc_ids;
  o.seed = 2;
  EXPECT_NE(load_dataset(o, encode_bytes).val.doc_ids, v1);
  // min_val_tokens holds out more documents.
  o.min_val_tokens = 3000;
  EXPECT_GE(load_dataset(o, encode_bytes).val.tokens.size(), 3000u);
  o.val_fraction = 0;
  o.min_val_tokens = 0;
  EXPECT_TRUE(load_dataset(o, encode_bytes).val.tokens.empty());
}

TEST(Data, EncoderErrorsSurface) {
  TempDir t;
  write(t / "a.txt", fortune_corpus(500, 9));
  DataOptions o = options(t, {t / "a.txt"});
  expect_error(
      [&] {
        load_dataset(o, [](std::string_view s) -> std::vector<int32_t> {
          if (s.find("entry 321:") == 0) DSV3_FAIL("cannot encode entry 321");
          return encode_bytes(s);
        });
      },
      {"entry 321"});
  o.vocab_size = 100;  // bytes >= 100 are out of range
  o.eos_id = -1;
  expect_error([&] { load_dataset(o, encode_bytes); }, {"outside the vocabulary", "a.txt"});
  o.vocab_size = kVocab;
  o.eos_id = 300;
  expect_error([&] { load_dataset(o, encode_bytes); }, {"EOS 300", "vocabulary"});
  write(t / "one.txt", "just one document\n");
  expect_error([&] { load_dataset(options(t, {t / "one.txt"}), encode_bytes); },
               {"validation", "1 document"});
}

namespace {

std::vector<int32_t> iota_tokens(int n) {
  std::vector<int32_t> v(size_t(n), 0);
  for (int i = 0; i < n; ++i) v[size_t(i)] = i;
  return v;
}

}  // namespace

TEST(Data, SamplerDeterministicContiguousAndCovering) {
  const uint64_t seed = 42;
  std::printf("sampler seed %llu\n", (unsigned long long)seed);
  auto tokens = iota_tokens(1000);
  const int64_t B = 3, T = 16;
  BatchSampler a(tokens, B, T, seed), b(tokens, B, T, seed), c(tokens, B, T, seed + 1);
  bool differs = false;
  for (int i = 0; i < 50; ++i) {
    auto x = a.next(), y = b.next(), z = c.next();
    ASSERT_EQ(x.size(), size_t(B * (T + 1)));
    EXPECT_EQ(x, y);
    differs |= x != z;
    for (int64_t r = 0; r < B; ++r)
      for (int64_t k = 1; k <= T; ++k)
        ASSERT_EQ(x[size_t(r * (T + 1) + k)], x[size_t(r * (T + 1))] + k);
  }
  EXPECT_TRUE(differs);
  // Within an epoch each window appears once, all starting at offset + i*T.
  BatchSampler s(tokens, 1, T, seed);
  int64_t w = s.windows_in_epoch(0);
  std::set<int32_t> starts;
  for (int64_t i = 0; i < w; ++i) starts.insert(s.next()[0]);
  EXPECT_EQ(int64_t(starts.size()), w);
  int32_t off = *starts.begin();
  EXPECT_LT(off, T);
  for (int32_t st : starts) EXPECT_EQ((st - off) % T, 0);
  EXPECT_EQ(s.state().epoch, 0);
  s.next();
  EXPECT_EQ(s.state().epoch, 1);
  // Unshuffled: windows in order from 0, the same every epoch.
  BatchSampler e(tokens, 2, T, seed, false);
  auto first = e.next();
  EXPECT_EQ(first[0], 0);
  EXPECT_EQ(first[size_t(T + 1)], T);
}

TEST(Data, SamplerResumesExactly) {
  const uint64_t seed = 2024;
  std::printf("sampler seed %llu\n", (unsigned long long)seed);
  auto tokens = iota_tokens(700);
  const int64_t B = 4, T = 32;
  BatchSampler ref(tokens, B, T, seed);
  int64_t per_epoch = ref.windows_in_epoch(0) / B;
  for (int stop : {0, 1, int(per_epoch), int(per_epoch) + 1, 3 * int(per_epoch) + 2}) {
    BatchSampler run(tokens, B, T, seed);
    for (int i = 0; i < stop; ++i) run.next();
    // Through JSON and through the I64 tensor form, as a checkpoint stores it.
    SamplerState saved =
        SamplerState::from_json(nlohmann::json::parse(run.state().to_json().dump()));
    auto arr = run.state().to_array();
    EXPECT_EQ(SamplerState::from_array(arr), run.state());
    BatchSampler resumed(tokens, B, T, seed);
    resumed.set_state(saved);
    for (int i = 0; i < 2 * per_epoch + 3; ++i)
      ASSERT_EQ(resumed.next(), run.next()) << "stop " << stop << " batch " << i;
  }
  BatchSampler other(tokens, B, T, seed + 1);
  expect_error([&] { other.set_state(ref.state()); }, {"seed"});
  SamplerState bad = ref.state();
  bad.cursor = 10000;
  expect_error([&] { ref.set_state(bad); }, {"cursor"});
  expect_error([&] { BatchSampler(std::span<const int32_t>(tokens.data(), 20), 1, 32, 1); },
               {"20 tokens", "32"});
}
