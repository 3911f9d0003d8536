// Added tokens of tokenizer.json ("added_tokens"), found in the text before pre-tokenization the
// way HF tokenizers' AddedVocabulary does: non-normalized tokens are matched in the raw text,
// normalized ones in the normalized remaining segments, each set leftmost-longest (Aho-Corasick
// semantics) with single_word, lstrip and rstrip applied to the match.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsv3::tok {

class Normalizer;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = true;
};

// A part of the input: an added token (id >= 0) or text still to tokenize (id < 0).
struct Segment {
  std::string_view text;
  size_t offset;  // byte offset in the string the split was made on
  int32_t id;
};

// Leftmost-longest matcher over a set of byte strings (a byte trie).
class TokenTrie {
 public:
  void add(std::string_view s, int32_t value);
  // First match at or after `pos`: true with [*b, *e) and its value.
  bool find(std::string_view text, size_t pos, size_t* b, size_t* e, int32_t* value) const;
  bool empty() const { return nodes_.size() <= 1; }

 private:
  struct Node {
    int32_t value = -1;
  };
  std::vector<Node> nodes_{Node{}};
  std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child
  std::array<bool, 256> first_{};
  int distinct_first_ = 0;
  unsigned char only_first_ = 0;
};

class AddedVocabulary {
 public:
  // Tokens in file order; `normalizer` gives the form normalized tokens are matched in.
  void build(std::vector<AddedToken> tokens, const Normalizer& normalizer);
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  // The token with this id, or nullptr.
  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;

  // Appends the segments of `text` (HF find_matches): normalized selects the set of tokens.
  void split(std::string_view text, bool normalized, std::vector<Segment>& out) const;
  bool has_normalized() const { return !normalized_trie_.empty(); }

 private:
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  TokenTrie raw_trie_, normalized_trie_;  // values: index into tokens_
};

}  // namespace dsv3::tok
