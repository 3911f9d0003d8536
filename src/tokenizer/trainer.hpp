// Byte-level BPE training (what `dsv3 train-tokenizer` runs). Texts are pre-tokenized with the
// DeepSeek-V3 pre-tokenizer (or the one given) into a word-frequency table; merges are then
// chosen greedily by pair frequency, highest first (ties: smallest pair of ids), as HF
// tokenizers' BpeTrainer does, with incremental pair counts and a lazily updated priority queue.
// The result is a tokenizer.json + tokenizer_config.json in the DeepSeek-V3 layout: the special
// tokens of the family at ids 0..2, the 256 byte tokens, the merges, then the chat/FIM tokens.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.hpp"

namespace dsv3::tok {

struct BpeTrainerOptions {
  int32_t vocab_size = 8192;       // total, special and added tokens included
  int64_t min_frequency = 2;       // pairs seen fewer times are never merged
  std::string pre_tokenizer_json;  // empty: the DeepSeek-V3 pre-tokenizer
  bool progress = true;            // progress bar on stderr
};

struct TrainedTokenizer {
  std::string tokenizer_json, config_json;
  int32_t vocab_size = 0;  // ids actually used (smaller than asked when the corpus runs out)
  int32_t merges = 0;
};

// The tokenizer.json "pre_tokenizer" value of DeepSeek-V3.
std::string deepseek_v3_pre_tokenizer_json();

class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainerOptions options = {});
  // Adds texts to the word-frequency table (parallel over texts). Special and added tokens of
  // the DeepSeek family inside the texts are cut out, not learned.
  void feed(std::span<const std::string> texts);
  TrainedTokenizer train() const;
  size_t distinct_words() const { return words_.size(); }

 private:
  BpeTrainerOptions options_;
  std::unordered_map<std::string, int64_t> words_;  // raw-byte pre-tokens -> count
};

// Writes tokenizer.json and tokenizer_config.json into dir (created if missing), atomically.
void save_trained_tokenizer(const TrainedTokenizer& t, const std::string& dir);

}  // namespace dsv3::tok
