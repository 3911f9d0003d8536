// BPE trainer: word-frequency table, pair counts kept up to date merge by merge (only the words
// that contain the merged pair are revisited), and a max-heap of (count, pair) whose stale
// entries are refreshed when they surface.
#include "tokenizer/trainer.hpp"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/file.hpp"
#include "tokenizer/byte_level.hpp"
#include "tokenizer/normalizer.hpp"
#include "tokenizer/pre_tokenizer.hpp"

namespace dsv3::tok {
namespace {

const char* const kSpecial[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"};

// Tokens DeepSeek-V3 adds after its BPE vocabulary (same order and flags): FIM, chat and tool
// markers, normalized and not special, and <|EOT|>, special.
const char* const kFamily[] = {"<｜fim▁hole｜>",
                               "<｜fim▁begin｜>",
                               "<｜fim▁end｜>",
                               "<｜User｜>",
                               "<｜Assistant｜>",
                               "<|EOT|>",
                               "<｜tool▁calls▁begin｜>",
                               "<｜tool▁calls▁end｜>",
                               "<｜tool▁call▁begin｜>",
                               "<｜tool▁call▁end｜>",
                               "<｜tool▁outputs▁begin｜>",
                               "<｜tool▁outputs▁end｜>",
                               "<｜tool▁output▁begin｜>",
                               "<｜tool▁output▁end｜>",
                               "<｜tool▁sep｜>"};

constexpr int32_t kNumSpecial = 3, kNumBytes = 256;
constexpr int32_t kNumFamily = int32_t(std::size(kFamily));

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

nlohmann::ordered_json added_token_json(int32_t id, const std::string& content, bool special,
                                        bool normalized) {
  return {{"id", id},        {"content", content},       {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", normalized}, {"special", special}};
}

nlohmann::ordered_json config_token_json(const std::string& content) {
  return {{"__type", "AddedToken"}, {"content", content}, {"lstrip", false},
          {"normalized", true},     {"rstrip", false},    {"single_word", false}};
}

struct Candidate {
  int64_t count;
  uint64_t pair;
  bool operator<(const Candidate& o) const {  // max-heap: larger count, then smaller pair
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

}  // namespace

std::string deepseek_v3_pre_tokenizer_json() {
  auto make_split = [](const std::string& re) {
    nlohmann::ordered_json s;
    s["type"] = "Split";
    s["pattern"] = {{"Regex", re}};
    s["behavior"] = "Isolated";
    s["invert"] = false;
    return s;
  };
  nlohmann::ordered_json bl;
  bl["type"] = "ByteLevel";
  bl["add_prefix_space"] = false;
  bl["trim_offsets"] = true;
  bl["use_regex"] = false;
  nlohmann::ordered_json seq;
  seq["type"] = "Sequence";
  seq["pretokenizers"] = {
      make_split("\\p{N}{1,3}"), make_split("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
      make_split("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
                 "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
      bl};
  return seq.dump();
}

BpeTrainer::BpeTrainer(BpeTrainerOptions options) : options_(std::move(options)) {
  if (options_.pre_tokenizer_json.empty())
    options_.pre_tokenizer_json = deepseek_v3_pre_tokenizer_json();
}

void BpeTrainer::feed(std::span<const std::string> texts) {
  PreTokenizer pre = PreTokenizer::from_json(nlohmann::json::parse(options_.pre_tokenizer_json));
  DSV3_CHECK(pre.model_maps_bytes(),
             "train-tokenizer: the pre-tokenizer must end with ByteLevel (byte-level BPE)");
  std::vector<AddedToken> cut;
  for (const char* s : kSpecial) cut.push_back({s, 0, true, false, false, false, false});
  for (const char* s : kFamily) cut.push_back({s, 0, true, false, false, false, false});
  AddedVocabulary added;
  added.build(cut, Normalizer{});

  int threads = std::max(1, std::min<int>(omp_get_max_threads(), int(texts.size())));
  std::vector<std::unordered_map<std::string, int64_t>> local(threads);
#pragma omp parallel num_threads(threads)
  {
    auto& counts = local[omp_get_thread_num()];
    std::vector<Segment> segments;
    std::vector<Piece> pieces, tmp;
    PieceArena arena;
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < texts.size(); ++i) {
      segments.clear();
      added.split(texts[i], false, segments);
      for (const auto& seg : segments) {
        if (seg.id >= 0) continue;
        pre.split(seg.text, seg.offset, pieces, tmp, arena);
        for (const auto& p : pieces) ++counts[std::string(p.text)];
        arena.clear();
      }
    }
  }
  for (auto& m : local)
    for (auto& [w, c] : m) words_[w] += c;
}

TrainedTokenizer BpeTrainer::train() const {
  const int32_t fixed = kNumSpecial + kNumBytes + kNumFamily;
  DSV3_CHECK(options_.vocab_size >= fixed,
             "train-tokenizer: vocab size {} is below the {} special, byte and added tokens",
             options_.vocab_size, fixed);
  const int32_t max_merges = options_.vocab_size - fixed;

  std::vector<std::string> tokens;
  for (const char* s : kSpecial) tokens.push_back(s);
  const auto& alpha = byte_level_alphabet();
  for (int b = 0; b < 256; ++b) tokens.push_back(alpha.byte_to_utf8[b]);

  // Word table in a fixed order so that training is deterministic.
  std::vector<std::pair<std::string, int64_t>> table(words_.begin(), words_.end());
  std::sort(table.begin(), table.end());
  std::vector<std::vector<int32_t>> words(table.size());
  std::vector<int64_t> counts(table.size());
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  pair_count.reserve(1 << 16);
  for (size_t w = 0; w < table.size(); ++w) {
    for (unsigned char c : table[w].first) words[w].push_back(kNumSpecial + c);
    counts[w] = table[w].second;
    for (size_t i = 0; i + 1 < words[w].size(); ++i) {
      uint64_t k = pair_key(words[w][i], words[w][i + 1]);
      pair_count[k] += counts[w];
      where[k].push_back(uint32_t(w));
    }
  }
  std::priority_queue<Candidate> heap;
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  std::vector<std::pair<std::string, std::string>> merges;
  ProgressBar bar("train-tokenizer", max_merges, options_.progress);
  std::vector<uint64_t> touched;
  while (int32_t(merges.size()) < max_merges && !heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.pair);
    int64_t now = it == pair_count.end() ? 0 : it->second;
    if (now != top.count) {  // stale entry: requeue with the current count
      if (now > 0) heap.push({now, top.pair});
      continue;
    }
    if (now < std::max<int64_t>(options_.min_frequency, 1)) break;
    int32_t a = int32_t(top.pair >> 32), b = int32_t(uint32_t(top.pair));
    int32_t id = int32_t(tokens.size());
    tokens.push_back(tokens[a] + tokens[b]);
    merges.emplace_back(tokens[a], tokens[b]);

    std::vector<uint32_t> ws = std::move(where[top.pair]);
    where.erase(top.pair);
    std::sort(ws.begin(), ws.end());
    ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
    touched.clear();
    for (uint32_t w : ws) {
      auto& s = words[w];
      int64_t c = counts[w];
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_count[pair_key(s[i], s[i + 1])] -= c;
      size_t o = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[o++] = id;
          ++i;
        } else {
          s[o++] = s[i];
        }
      }
      s.resize(o);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        uint64_t k = pair_key(s[i], s[i + 1]);
        pair_count[k] += c;
        if (s[i] == id || s[i + 1] == id) {
          where[k].push_back(w);
          touched.push_back(k);
        }
      }
    }
    pair_count.erase(top.pair);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched) heap.push({pair_count[k], k});
    if (merges.size() % 64 == 0) bar.update(int64_t(merges.size()));
  }
  bar.finish(fmt::format("{} merges, {} words", merges.size(), words.size()));

  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = int32_t(i);
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (const auto& [x, y] : merges) merge_list.push_back(x + " " + y);

  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (int32_t i = 0; i < kNumSpecial; ++i)
    added.push_back(added_token_json(i, kSpecial[i], true, false));
  int32_t next = int32_t(tokens.size());
  for (const char* s : kFamily) {
    bool eot = std::string(s) == "<|EOT|>";
    added.push_back(added_token_json(next++, s, eot, true));
  }

  nlohmann::ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", nlohmann::ordered_json::array()}};
  j["pre_tokenizer"] = nlohmann::ordered_json::parse(options_.pre_tokenizer_json);
  j["post_processor"] = {{"type", "ByteLevel"},
                         {"add_prefix_space", true},
                         {"trim_offsets", false},
                         {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};
  nlohmann::ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merge_list);
  j["model"] = std::move(model);

  nlohmann::ordered_json cfg;
  cfg["add_bos_token"] = true;
  cfg["add_eos_token"] = false;
  cfg["bos_token"] = config_token_json(kSpecial[0]);
  cfg["clean_up_tokenization_spaces"] = false;
  cfg["eos_token"] = config_token_json(kSpecial[1]);
  cfg["legacy"] = true;
  cfg["model_max_length"] = 131072;
  cfg["pad_token"] = config_token_json(kSpecial[1]);
  cfg["sp_model_kwargs"] = nlohmann::ordered_json::object();
  cfg["unk_token"] = nullptr;
  cfg["tokenizer_class"] = "LlamaTokenizerFast";
  cfg["chat_template"] = kDeepSeekV3ChatTemplate;

  TrainedTokenizer out;
  out.tokenizer_json = j.dump(2);
  out.config_json = cfg.dump(2);
  out.vocab_size = next;
  out.merges = int32_t(merges.size());
  return out;
}

void save_trained_tokenizer(const TrainedTokenizer& t, const std::string& dir) {
  std::filesystem::create_directories(dir);
  io::atomic_write(dir + "/tokenizer.json", t.tokenizer_json + "\n");
  io::atomic_write(dir + "/tokenizer_config.json", t.config_json + "\n");
}

}  // namespace dsv3::tok
