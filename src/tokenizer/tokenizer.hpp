// Tokenizer: a Hugging Face tokenizer.json of the byte-level BPE family (plus its
// tokenizer_config.json), encoding and decoding bit-exactly as HF tokenizers does. The pipeline:
// UTF-8 repair -> added tokens in the raw text -> normalizer -> normalized added tokens ->
// pre-tokenizer -> BPE (memoised per piece) -> post-processor; decoding goes through the decoder.
//
// Invalid UTF-8 (which HF cannot receive, its input being a Rust &str) is first converted the way
// String::from_utf8_lossy converts it: each maximal invalid subpart becomes U+FFFD. Ids the
// vocabulary lacks are skipped by decode, as in HF.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_vocab.hpp"
#include "tokenizer/chat_template.hpp"

namespace dsv3::tok {

// What transformers reads from tokenizer_config.json.
struct TokenizerConfig {
  std::string bos_token, eos_token, pad_token;  // token contents, empty when absent
  bool add_bos_token = false, add_eos_token = false;
  std::string tokenizer_class, chat_template;
  int64_t model_max_length = 0;
};

class Tokenizer {
 public:
  // `path`: a directory with tokenizer.json (and optionally tokenizer_config.json), or the path
  // of a tokenizer.json (a tokenizer_config.json beside it is read too).
  static Tokenizer load(const std::string& path);
  // From file contents; `config_json` may be empty.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {});

  // add_special_tokens applies the post-processor; for Llama-class tokenizers with add_bos_token /
  // add_eos_token in tokenizer_config.json, the BOS/EOS template transformers installs instead.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Texts in parallel (OpenMP threads, dynamic schedule); same results as encode().
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string> texts,
                                                 bool add_special_tokens = false) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  int32_t vocab_size() const;  // largest id + 1
  bool is_special(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;
  const TokenizerConfig& config() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;

  // The prompt text of a conversation. Supports the DeepSeek-V3 template only (tokenizer_config's
  // chat_template must be it); throws otherwise.
  std::string apply_chat_template(std::span<const ChatMessage> messages,
                                  bool add_generation_prompt) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace dsv3::tok
