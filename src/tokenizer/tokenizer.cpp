// Tokenizer: loading of tokenizer.json / tokenizer_config.json, the encode pipeline, the
// post-processors (TemplateProcessing, ByteLevel, Roberta, Bert, Sequence; single sequences) and
// a pool of per-thread BPE memos.
#include "tokenizer/tokenizer.hpp"

#include <omp.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/file.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/decoder.hpp"
#include "tokenizer/normalizer.hpp"
#include "tokenizer/pre_tokenizer.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {

struct Tokenizer::Impl {
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Bpe model;
  AddedVocabulary added;
  Decoder decoder;
  std::vector<int32_t> prefix, suffix;  // added by add_special_tokens
  TokenizerConfig config;
  int32_t id_bound = 0;

  mutable std::mutex pool_mutex;
  mutable std::vector<std::unique_ptr<BpeCache>> pool;

  struct Scratch {
    std::vector<Segment> segments, normalized;
    std::vector<Piece> pieces, pieces_tmp;
    std::vector<uint64_t> hashes;  // hash_bytes of each piece
    PieceArena arena;
  };

  std::unique_ptr<BpeCache> take_cache() const {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (pool.empty()) return std::make_unique<BpeCache>();
    auto c = std::move(pool.back());
    pool.pop_back();
    return c;
  }
  void give_cache(std::unique_ptr<BpeCache> c) const {
    std::lock_guard<std::mutex> lock(pool_mutex);
    pool.push_back(std::move(c));
  }

  void encode_pieces(Scratch& w, BpeCache& cache, bool raw_bytes, std::vector<int32_t>& out) const;
  void encode_into(std::string_view text, bool add_special, Scratch& w, BpeCache& cache,
                   std::vector<int32_t>& out) const;
};

namespace {

// A token of tokenizer_config.json: a string, {"content": ...} or null.
std::string config_token(const nlohmann::json& c, const char* key) {
  if (!c.contains(key) || c.at(key).is_null()) return "";
  const auto& v = c.at(key);
  if (v.is_string()) return v.get<std::string>();
  return v.value("content", "");
}

TokenizerConfig parse_config(const nlohmann::json& c) {
  TokenizerConfig cfg;
  cfg.bos_token = config_token(c, "bos_token");
  cfg.eos_token = config_token(c, "eos_token");
  cfg.pad_token = config_token(c, "pad_token");
  cfg.add_bos_token = c.value("add_bos_token", false);
  cfg.add_eos_token = c.value("add_eos_token", false);
  cfg.tokenizer_class = c.value("tokenizer_class", "");
  if (c.contains("model_max_length") && c.at("model_max_length").is_number()) {
    // Often 1e30 ("no limit"): saturate rather than cast a float beyond int64 (undefined).
    const double m = c.at("model_max_length").get<double>();
    cfg.model_max_length = m >= 9.2e18 ? INT64_MAX : m <= 0 ? 0 : int64_t(m);
  }
  if (c.contains("chat_template")) {
    const auto& t = c.at("chat_template");
    if (t.is_string()) {
      cfg.chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // named templates: take "default"
      for (const auto& e : t)
        if (e.value("name", "") == "default") cfg.chat_template = e.value("template", "");
    }
  }
  return cfg;
}

// Ids a post-processor puts around a single sequence.
void parse_post_processor(const nlohmann::json& j, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  std::string type = j.value("type", "");
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const auto& sub : j.at("processors")) {
      std::vector<int32_t> p, s;
      parse_post_processor(sub, p, s);
      prefix.insert(prefix.begin(), p.begin(), p.end());
      suffix.insert(suffix.end(), s.begin(), s.end());
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    prefix.push_back(j.at("cls").at(1).get<int32_t>());
    suffix.push_back(j.at("sep").at(1).get<int32_t>());
    return;
  }
  DSV3_CHECK(type == "TemplateProcessing",
             "tokenizer.json: post-processor '{}' is not supported (supported: ByteLevel, "
             "TemplateProcessing, RobertaProcessing, BertProcessing, Sequence)",
             type);
  bool seen_a = false;
  for (const auto& item : j.at("single")) {
    if (item.contains("Sequence")) {
      seen_a = true;
      continue;
    }
    std::string id = item.at("SpecialToken").at("id").get<std::string>();
    DSV3_CHECK(j.at("special_tokens").contains(id),
               "tokenizer.json: TemplateProcessing uses '{}' without defining it", id);
    auto& dst = seen_a ? suffix : prefix;
    for (const auto& v : j.at("special_tokens").at(id).at("ids")) dst.push_back(v.get<int32_t>());
  }
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(tokenizer_json);
  } catch (const nlohmann::json::exception& e) {
    DSV3_FAIL("tokenizer.json: not valid JSON: {}", json_error_text(e.what()));
  }
  auto impl = std::make_shared<Impl>();
  try {
    // By reference: a copy would lose its place in the document, and errors their JSON pointer.
    static const nlohmann::json null_json;
    auto get = [&](const char* key) -> const nlohmann::json& {
      return j.contains(key) ? j.at(key) : null_json;
    };
    impl->normalizer = Normalizer::from_json(get("normalizer"));
    impl->pre_tokenizer = PreTokenizer::from_json(get("pre_tokenizer"));
    DSV3_CHECK(j.contains("model"), "tokenizer.json: no model");
    impl->model = Bpe::from_json(j.at("model"));
    impl->decoder = Decoder::from_json(get("decoder"));
    parse_post_processor(get("post_processor"), impl->prefix, impl->suffix);

    std::vector<AddedToken> added;
    impl->id_bound = impl->model.id_bound();
    for (const auto& a : get("added_tokens")) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      // HF keeps the model's id for a token the vocab already has.
      const auto& id = a.at("id");
      DSV3_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX,
                 "tokenizer.json: added token '{}' has id {}, expected an integer in [0, 2^31)",
                 t.content, id.dump());
      t.id = impl->model.token_to_id(t.content).value_or(id.get<int32_t>());
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      t.normalized = a.value("normalized", !t.special);
      if (t.content.empty()) continue;
      impl->id_bound = std::max(impl->id_bound, t.id + 1);
      added.push_back(std::move(t));
    }
    impl->added.build(std::move(added), impl->normalizer);
  } catch (const nlohmann::json::exception& e) {
    DSV3_FAIL("tokenizer.json: unexpected structure {}", json_error_text(e.what()));
  }

  if (!config_json.empty()) {
    try {
      impl->config = parse_config(nlohmann::json::parse(config_json));
    } catch (const nlohmann::json::exception& e) {
      DSV3_FAIL("tokenizer_config.json: {}", json_error_text(e.what()));
    }
    // transformers' LlamaTokenizerFast replaces the post-processor by a BOS/EOS template.
    const auto& cfg = impl->config;
    if (cfg.tokenizer_class.rfind("LlamaTokenizer", 0) == 0) {
      impl->prefix.clear();
      impl->suffix.clear();
      auto id_of = [&](const std::string& tok, const char* what) {
        const AddedToken* a = impl->added.by_content(tok);
        auto id = a ? std::optional<int32_t>(a->id) : impl->model.token_to_id(tok);
        DSV3_CHECK(id, "tokenizer_config.json: {} '{}' is not in the vocabulary", what, tok);
        return *id;
      };
      if (cfg.add_bos_token) impl->prefix.push_back(id_of(cfg.bos_token, "bos_token"));
      if (cfg.add_eos_token) impl->suffix.push_back(id_of(cfg.eos_token, "eos_token"));
    }
  }
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path json = path, dir = path;
  if (fs::is_directory(path))
    json = fs::path(path) / "tokenizer.json";
  else
    dir = fs::path(path).parent_path();
  DSV3_CHECK(fs::exists(json), "tokenizer: '{}' not found", json.string());
  std::string config;
  if (fs::exists(dir / "tokenizer_config.json"))
    config = io::read_file((dir / "tokenizer_config.json").string());
  try {
    return from_json(io::read_file(json.string()), config);
  } catch (const Error& e) {
    DSV3_FAIL("{}: {}", json.string(), e.what());
  }
}

// The pieces through the BPE memo, with the memo's two dependent misses per lookup (index slot,
// then entry) prefetched 8 and 4 pieces ahead.
void Tokenizer::Impl::encode_pieces(Scratch& w, BpeCache& cache, bool raw_bytes,
                                    std::vector<int32_t>& out) const {
  constexpr size_t kSlotAhead = 8, kEntryAhead = 4;
  const size_t n = w.pieces.size();
  w.hashes.resize(n);
  for (size_t i = 0; i < n; ++i) w.hashes[i] = hash_bytes(w.pieces[i].text);
  for (size_t i = 0; i < std::min(n, kSlotAhead); ++i) cache.prefetch_slot(w.hashes[i]);
  for (size_t i = 0; i < n; ++i) {
    if (i + kSlotAhead < n) cache.prefetch_slot(w.hashes[i + kSlotAhead]);
    if (i + kEntryAhead < n) cache.prefetch_entry(w.hashes[i + kEntryAhead]);
    model.encode(w.pieces[i].text, w.hashes[i], raw_bytes, cache, out);
  }
}

void Tokenizer::Impl::encode_into(std::string_view text, bool add_special, Scratch& w,
                                  BpeCache& cache, std::vector<int32_t>& out) const {
  std::string repaired;
  if (!utf8_is_valid(text)) {
    repaired = utf8_lossy(text);
    text = repaired;
  }
  if (add_special) out.insert(out.end(), prefix.begin(), prefix.end());
  bool raw_bytes = pre_tokenizer.model_maps_bytes();
  w.segments.clear();
  added.split(text, false, w.segments);
  for (const Segment& seg : w.segments) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      continue;
    }
    std::string_view norm = seg.text;
    if (!normalizer.is_identity()) norm = w.arena.add(normalizer.normalize(seg.text));
    w.normalized.clear();
    if (added.has_normalized())
      added.split(norm, true, w.normalized);
    else
      w.normalized.push_back({norm, 0, -1});
    for (const Segment& ns : w.normalized) {
      if (ns.id >= 0) {
        out.push_back(ns.id);
        continue;
      }
      pre_tokenizer.split(ns.text, seg.offset + ns.offset, w.pieces, w.pieces_tmp, w.arena);
      encode_pieces(w, cache, raw_bytes, out);
    }
  }
  if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
  w.arena.clear();
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  Impl::Scratch w;
  auto cache = impl_->take_cache();
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, add_special_tokens, w, *cache, out);
  impl_->give_cache(std::move(cache));
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(std::span<const std::string> texts,
                                                          bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  std::atomic<size_t> next{0};
  int threads = omp_in_parallel() ? 1 : std::min<int>(omp_get_max_threads(), int(texts.size()));
  std::exception_ptr error;
#pragma omp parallel num_threads(std::max(threads, 1))
  {
    Impl::Scratch w;
    auto cache = impl_->take_cache();
    try {
      for (size_t i; (i = next.fetch_add(1)) < texts.size();)
        impl_->encode_into(texts[i], add_special_tokens, w, *cache, out[i]);
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
      next = texts.size();
    }
    impl_->give_cache(std::move(cache));
  }
  if (error) std::rethrow_exception(error);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const AddedToken* a = impl_->added.by_id(id);
    std::string tok;
    if (a) {
      tok = a->content;
    } else if (const std::string* t = impl_->model.id_to_token(id)) {
      tok = *t;
    } else {
      continue;
    }
    if (skip_special_tokens) {
      const AddedToken* s = a ? a : impl_->added.by_content(tok);
      if (s && s->special) continue;
    }
    tokens.push_back(std::move(tok));
  }
  return impl_->decoder.decode(std::move(tokens));
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* a = impl_->added.by_content(token)) return a->id;
  return impl_->model.token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* a = impl_->added.by_id(id)) return a->content;
  if (const std::string* t = impl_->model.id_to_token(id)) return *t;
  return std::nullopt;
}

int32_t Tokenizer::vocab_size() const {
  return impl_->id_bound;
}

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* a = impl_->added.by_id(id);
  return a && a->special;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added.tokens();
}
const TokenizerConfig& Tokenizer::config() const {
  return impl_->config;
}

std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->config.bos_token.empty() ? std::nullopt : token_to_id(impl_->config.bos_token);
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->config.eos_token.empty() ? std::nullopt : token_to_id(impl_->config.eos_token);
}
std::optional<int32_t> Tokenizer::pad_id() const {
  return impl_->config.pad_token.empty() ? std::nullopt : token_to_id(impl_->config.pad_token);
}

std::string Tokenizer::apply_chat_template(std::span<const ChatMessage> messages,
                                           bool add_generation_prompt) const {
  const auto& cfg = impl_->config;
  DSV3_CHECK(!cfg.chat_template.empty(), "tokenizer has no chat_template in tokenizer_config.json");
  DSV3_CHECK(is_deepseek_v3_chat_template(cfg.chat_template),
             "tokenizer_config.json: only the DeepSeek-V3 chat template is supported");
  return render_deepseek_v3_chat(messages, cfg.bos_token, add_generation_prompt);
}

}  // namespace dsv3::tok
