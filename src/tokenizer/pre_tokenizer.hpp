// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): Sequence, Split (regex or string; Isolated,
// Removed, MergedWithPrevious, MergedWithNext, Contiguous; invert), ByteLevel (with or without
// its GPT-2 regex, add_prefix_space), Digits and Metaspace, with HF tokenizers' semantics
// (pre_tokenizers/*.rs and NormalizedString::split). Pieces are views into the input or into an
// arena that owns the strings a stage had to rewrite.
#pragma once
#include <cstddef>
#include <deque>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::tok {

struct Piece {
  std::string_view text;
  size_t offset;  // byte offset of the piece in the input text (Metaspace's prepend_scheme first)
};

// Owns strings made during one encode call (stable addresses).
class PieceArena {
 public:
  std::string_view add(std::string s) { return strings_.emplace_back(std::move(s)); }
  void clear() { strings_.clear(); }

 private:
  std::deque<std::string> strings_;
};

class PreTokenizerStage {
 public:
  virtual ~PreTokenizerStage() = default;
  // Appends the non-empty pieces `in` splits into.
  virtual void apply(const Piece& in, std::vector<Piece>& out, PieceArena& arena) const = 0;
};

class PreTokenizer {
 public:
  // `j` is the "pre_tokenizer" value of tokenizer.json (null: the whole segment is one piece).
  static PreTokenizer from_json(const nlohmann::json& j);

  // Splits one text segment (at byte `offset` of the input) into pieces. `scratch` is reused
  // storage.
  void split(std::string_view text, size_t offset, std::vector<Piece>& out,
             std::vector<Piece>& scratch, PieceArena& arena) const;
  // True when the last stage is ByteLevel: its pieces are still raw bytes and the model maps them
  // through the byte-level alphabet itself (saves a copy of every piece).
  bool model_maps_bytes() const { return model_maps_bytes_; }

 private:
  void add(const nlohmann::json& j);
  std::vector<std::shared_ptr<const PreTokenizerStage>> stages_;
  bool model_maps_bytes_ = false;
};

}  // namespace dsv3::tok
