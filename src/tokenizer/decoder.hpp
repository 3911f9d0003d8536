// Decoders of tokenizer.json ("decoder"): ByteLevel, Sequence, Replace, ByteFallback, Fuse, Strip
// and Metaspace with HF tokenizers' semantics (decoders/*.rs). ByteLevel turns each token whose
// characters are all in the byte-level alphabet back into bytes (other tokens, such as special
// tokens, into their own UTF-8) and converts the result like String::from_utf8_lossy.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace dsv3::tok {

class Decoder {
 public:
  // `j` is the "decoder" value of tokenizer.json; null joins the tokens with spaces (as HF does).
  static Decoder from_json(const nlohmann::json& j);
  std::string decode(std::vector<std::string> tokens) const;

 private:
  struct Step {
    enum Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind;
    std::string a, b;         // Replace: pattern, content; Strip: content; Metaspace: replacement
    int start = 0, stop = 0;  // Strip
    bool prepend = true;      // Metaspace: prepend_scheme != never
  };
  void add(const nlohmann::json& j);
  std::vector<Step> steps_;
  bool none_ = true;
};

}  // namespace dsv3::tok
