// Pre-tokenizer stages. The split behaviours follow NormalizedString::split of HF tokenizers:
// a pattern yields (range, is_match) pairs covering the piece, the behaviour then groups them.
#include "tokenizer/pre_tokenizer.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "tokenizer/byte_level.hpp"
#include "tokenizer/regex.hpp"

namespace dsv3::tok {
namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& s) {
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  DSV3_FAIL("tokenizer.json: unknown Split behavior '{}'", s);
}

struct Span {
  size_t b, e;
  bool match;
};

// Groups the (range, is_match) spans covering a piece per `behavior` and emits the non-empty
// results.
void emit_spans(const Piece& in, std::vector<Span>& spans, Behavior behavior,
                std::vector<Piece>& out) {
  auto emit = [&](size_t b, size_t e) {
    if (e > b) out.push_back({in.text.substr(b, e - b), in.offset + b});
  };
  switch (behavior) {
    case Behavior::Isolated:
      for (const auto& s : spans) emit(s.b, s.e);
      return;
    case Behavior::Removed:
      for (const auto& s : spans)
        if (!s.match) emit(s.b, s.e);
      return;
    default:
      break;
  }
  std::vector<Span> merged;
  bool prev_match = false;
  if (behavior == Behavior::MergedWithPrevious || behavior == Behavior::Contiguous) {
    for (const auto& s : spans) {
      bool join = behavior == Behavior::Contiguous ? s.match == prev_match : s.match && !prev_match;
      if (join && !merged.empty())
        merged.back().e = s.e;
      else
        merged.push_back({s.b, s.e, false});
      prev_match = s.match;
    }
  } else {  // MergedWithNext: the same walk from the right
    for (size_t i = spans.size(); i-- > 0;) {
      const auto& s = spans[i];
      if (s.match && !prev_match && !merged.empty())
        merged.back().b = s.b;
      else
        merged.push_back({s.b, s.e, false});
      prev_match = s.match;
    }
    std::reverse(merged.begin(), merged.end());
  }
  for (const auto& s : merged) emit(s.b, s.e);
}

// Regex matches of `re` as spans covering `text` (find_matches of HF's Pattern for a regex).
void regex_spans(const Regex& re, std::string_view text, bool invert, std::vector<Span>& spans) {
  spans.clear();
  size_t prev = 0;
  re.find_iter(text, [&](size_t b, size_t e) {
    if (b != prev) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  });
  if (prev != text.size()) spans.push_back({prev, text.size(), invert});
}

// Isolated split by a regex, streamed without a span list (the hot path).
void split_isolated(const Regex& re, const Piece& in, std::vector<Piece>& out) {
  size_t prev = 0;
  re.find_iter(in.text, [&](size_t b, size_t e) {
    if (b > prev) out.push_back({in.text.substr(prev, b - prev), in.offset + prev});
    if (e > b) out.push_back({in.text.substr(b, e - b), in.offset + b});
    prev = e;
  });
  if (prev < in.text.size()) out.push_back({in.text.substr(prev), in.offset + prev});
}

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    bool plain = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (static_cast<unsigned char>(c) >= 0x80);
    if (!plain) out += '\\';
    out += c;
  }
  return out;
}

class SplitStage : public PreTokenizerStage {
 public:
  SplitStage(Regex re, Behavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  void apply(const Piece& in, std::vector<Piece>& out, PieceArena&) const override {
    if (behavior_ == Behavior::Isolated) return split_isolated(re_, in, out);
    thread_local std::vector<Span> spans;
    regex_spans(re_, in.text, invert_, spans);
    emit_spans(in, spans, behavior_, out);
  }

 private:
  Regex re_;
  Behavior behavior_;
  bool invert_;
};

// The GPT-2 pre-tokenization regex that ByteLevel uses when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelStage : public PreTokenizerStage {
 public:
  ByteLevelStage(bool add_prefix_space, bool use_regex, bool map_bytes)
      : add_prefix_space_(add_prefix_space), map_bytes_(map_bytes) {
    if (use_regex) re_ = Regex(kGpt2Pattern);
  }
  void apply(const Piece& in, std::vector<Piece>& out, PieceArena& arena) const override {
    Piece p = in;
    if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) {
      std::string spaced(1, ' ');  // not " " + string: a GCC 12 -Wrestrict false positive
      spaced += p.text;
      p.text = arena.add(std::move(spaced));
    }
    size_t first = out.size();
    if (re_.empty()) {
      if (!p.text.empty()) out.push_back(p);
    } else {
      split_isolated(re_, p, out);
    }
    if (map_bytes_)
      for (size_t i = first; i < out.size(); ++i)
        out[i].text = arena.add(byte_level_encode(out[i].text));
  }

 private:
  bool add_prefix_space_, map_bytes_;
  Regex re_;
};

class MetaspaceStage : public PreTokenizerStage {
 public:
  enum class Prepend { Always, First, Never };
  MetaspaceStage(std::string replacement, Prepend prepend, bool split)
      : rep_(std::move(replacement)), prepend_(prepend), split_(split), re_(regex_escape(rep_)) {}
  void apply(const Piece& in, std::vector<Piece>& out, PieceArena& arena) const override {
    std::string s;
    for (char c : in.text) {
      if (c == ' ')
        s += rep_;
      else
        s += c;
    }
    bool starts = s.compare(0, rep_.size(), rep_) == 0;
    if (!starts && (prepend_ == Prepend::Always || (prepend_ == Prepend::First && in.offset == 0)))
      s.insert(0, rep_);
    Piece p{arena.add(std::move(s)), in.offset};
    if (!split_) {
      if (!p.text.empty()) out.push_back(p);
      return;
    }
    thread_local std::vector<Span> spans;
    regex_spans(re_, p.text, false, spans);
    emit_spans(p, spans, Behavior::MergedWithNext, out);
  }

 private:
  std::string rep_;
  Prepend prepend_;
  bool split_;
  Regex re_;
};

void flatten(const nlohmann::json& j, std::vector<nlohmann::json>& out) {
  if (j.value("type", "") == "Sequence") {
    for (const auto& sub : j.at("pretokenizers")) flatten(sub, out);
  } else {
    out.push_back(j);
  }
}

std::shared_ptr<const PreTokenizerStage> make_stage(const nlohmann::json& j, bool last) {
  std::string type = j.value("type", "");
  if (type == "Split") {
    const auto& pat = j.at("pattern");
    Regex re = pat.contains("Regex") ? Regex(pat.at("Regex").get<std::string>())
                                     : Regex(regex_escape(pat.at("String").get<std::string>()));
    return std::make_shared<SplitStage>(std::move(re), parse_behavior(j.at("behavior")),
                                        j.value("invert", false));
  }
  if (type == "ByteLevel")
    return std::make_shared<ByteLevelStage>(j.value("add_prefix_space", true),
                                            j.value("use_regex", true), !last);
  if (type == "Digits")
    return std::make_shared<SplitStage>(
        Regex(j.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+"), Behavior::Isolated,
        false);
  if (type == "Metaspace") {
    auto prepend = MetaspaceStage::Prepend::Always;
    if (j.contains("prepend_scheme")) {
      std::string s = j.at("prepend_scheme");
      prepend = s == "first"   ? MetaspaceStage::Prepend::First
                : s == "never" ? MetaspaceStage::Prepend::Never
                               : MetaspaceStage::Prepend::Always;
    } else if (!j.value("add_prefix_space", true)) {
      prepend = MetaspaceStage::Prepend::Never;
    }
    return std::make_shared<MetaspaceStage>(j.value("replacement", "\u2581"), prepend,
                                            j.value("split", true));
  }
  DSV3_FAIL(
      "tokenizer.json: pre-tokenizer '{}' is not supported (supported: Sequence, Split, "
      "ByteLevel, Digits, Metaspace)",
      type);
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j) {
  PreTokenizer p;
  if (j.is_null()) return p;
  std::vector<nlohmann::json> flat;
  flatten(j, flat);
  for (size_t i = 0; i < flat.size(); ++i)
    p.stages_.push_back(make_stage(flat[i], i + 1 == flat.size()));
  p.model_maps_bytes_ = !flat.empty() && flat.back().value("type", "") == "ByteLevel";
  return p;
}

void PreTokenizer::split(std::string_view text, size_t offset, std::vector<Piece>& out,
                         std::vector<Piece>& scratch, PieceArena& arena) const {
  out.clear();
  if (text.empty()) return;
  out.push_back({text, offset});
  for (const auto& stage : stages_) {
    scratch.clear();
    for (const auto& p : out) stage->apply(p, scratch, arena);
    std::swap(out, scratch);
  }
}

}  // namespace dsv3::tok
