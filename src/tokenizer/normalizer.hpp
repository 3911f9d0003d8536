// Normalizers of tokenizer.json ("normalizer"): Sequence, Prepend, Replace (string or regex) and
// Strip, with HF tokenizers' semantics. Others (NFC, NFKC, Lowercase, Precompiled, ...) are
// rejected at load time with their name.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.hpp"

namespace dsv3::tok {

class Normalizer {
 public:
  // `j` is the "normalizer" value of tokenizer.json (null gives the identity).
  static Normalizer from_json(const nlohmann::json& j);
  // True when normalize() never changes a string (no normalizer, or an empty Sequence).
  bool is_identity() const { return steps_.empty(); }
  std::string normalize(std::string_view s) const;

 private:
  struct Step {
    enum Kind { Prepend, ReplaceString, ReplaceRegex, Strip } kind;
    std::string text, content;  // Prepend: text; Replace: pattern text and content
    Regex regex;
    bool left = false, right = false;  // Strip
  };
  void add(const nlohmann::json& j);
  std::vector<Step> steps_;
};

}  // namespace dsv3::tok
