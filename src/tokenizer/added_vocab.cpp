// AddedVocabulary::find_matches of HF tokenizers (tokenizer/added_vocabulary.rs). The word and
// space tests use the Rust regex crate's Unicode \w and \s, as HF does.
#include "tokenizer/added_vocab.hpp"

#include <cstring>

#include "core/error.hpp"
#include "tokenizer/normalizer.hpp"
#include "tokenizer/regex.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

// Rust regex \w: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool is_word_char(uint32_t cp) {
  static const Regex word("^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]");
  std::string s;
  utf8_append(s, cp);
  size_t b, e;
  return word.search(s, 0, &b, &e);
}

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  uint32_t cp;
  if (!utf8_decode(reinterpret_cast<const unsigned char*>(s.data()) + b, s.size() - b, &cp))
    return false;
  return is_word_char(cp);
}

bool starts_with_word(std::string_view s) {
  uint32_t cp;
  if (s.empty() || !utf8_decode(reinterpret_cast<const unsigned char*>(s.data()), s.size(), &cp))
    return false;
  return is_word_char(cp);
}

// Start of the trailing run of White_Space in s (`\s*$`).
size_t space_leftmost_at_end(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t b = end - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    uint32_t cp;
    if (!utf8_decode(reinterpret_cast<const unsigned char*>(s.data()) + b, end - b, &cp) ||
        !is_white_space(cp))
      break;
    end = b;
  }
  return end;
}

// Length of the leading run of White_Space in s (`^\s*`).
size_t space_rightmost_at_start(std::string_view s) {
  size_t i = 0;
  uint32_t cp;
  while (i < s.size()) {
    size_t len =
        utf8_decode(reinterpret_cast<const unsigned char*>(s.data()) + i, s.size() - i, &cp);
    if (!len || !is_white_space(cp)) break;
    i += len;
  }
  return i;
}

}  // namespace

void TokenTrie::add(std::string_view s, int32_t value) {
  if (s.empty()) return;
  int32_t node = 0;
  for (unsigned char c : s) {
    uint64_t key = (uint64_t(node) << 8) | c;
    auto it = edges_.find(key);
    if (it == edges_.end()) {
      nodes_.push_back({});
      it = edges_.emplace(key, int32_t(nodes_.size() - 1)).first;
    }
    node = it->second;
  }
  if (nodes_[node].value < 0) nodes_[node].value = value;  // first of equal strings wins
  unsigned char f = static_cast<unsigned char>(s[0]);
  if (!first_[f]) {
    first_[f] = true;
    ++distinct_first_;
    only_first_ = f;
  }
}

bool TokenTrie::find(std::string_view text, size_t pos, size_t* b, size_t* e,
                     int32_t* value) const {
  if (empty()) return false;
  auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  for (size_t i = pos; i < n; ++i) {
    if (distinct_first_ == 1) {
      auto* hit = static_cast<const unsigned char*>(std::memchr(p + i, only_first_, n - i));
      if (!hit) return false;
      i = size_t(hit - p);
    } else if (!first_[p[i]]) {
      continue;
    }
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < n; ++j) {
      auto it = edges_.find((uint64_t(node) << 8) | p[j]);
      if (it == edges_.end()) break;
      node = it->second;
      if (nodes_[node].value >= 0) {
        best = nodes_[node].value;
        best_end = j + 1;
      }
    }
    if (best >= 0) {
      *b = i;
      *e = best_end;
      *value = best;
      return true;
    }
  }
  return false;
}

void AddedVocabulary::build(std::vector<AddedToken> tokens, const Normalizer& normalizer) {
  tokens_ = std::move(tokens);
  by_id_.clear();
  by_content_.clear();
  raw_trie_ = {};
  normalized_trie_ = {};
  // HF matches special tokens before the others when both match the same text.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const auto& t = tokens_[i];
      if (t.special != (pass == 0)) continue;
      by_id_.emplace(t.id, i);
      by_content_.emplace(t.content, i);
      if (t.normalized)
        normalized_trie_.add(normalizer.normalize(t.content), int32_t(i));
      else
        raw_trie_.add(t.content, int32_t(i));
    }
  }
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

void AddedVocabulary::split(std::string_view text, bool normalized,
                            std::vector<Segment>& out) const {
  const TokenTrie& trie = normalized ? normalized_trie_ : raw_trie_;
  size_t start_offset = 0, pos = 0, b, e;
  int32_t index;
  while (pos < text.size() && trie.find(text, pos, &b, &e, &index)) {
    pos = e;
    const AddedToken& t = tokens_[index];
    if (t.single_word) {
      bool start_space = b == 0 || !ends_with_word(text.substr(0, b));
      bool stop_space = e == text.size() || !starts_with_word(text.substr(e));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) b = std::max(space_leftmost_at_end(text.substr(0, b)), start_offset);
    if (t.rstrip) e += space_rightmost_at_start(text.substr(e));
    if (start_offset < b)
      out.push_back({text.substr(start_offset, b - start_offset), start_offset, -1});
    out.push_back({text.substr(b, e - b), b, t.id});
    start_offset = e;
  }
  if (start_offset < text.size()) out.push_back({text.substr(start_offset), start_offset, -1});
}

}  // namespace dsv3::tok
