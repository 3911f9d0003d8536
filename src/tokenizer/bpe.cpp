// BPE model: loading, per-piece memo, and the merge loop of HF tokenizers' Word::merge_all.
#include "tokenizer/bpe.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (a known false
// positive of -W(maybe-)uninitialized once they are inlined, e.g. in _mm512_reduce_min_epu32).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "tokenizer/byte_level.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {

uint64_t hash_bytes(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  h = (h ^ v) * 0x94d049bb133111ebull;
  h ^= h >> 32;
  return h | 1;  // never 0, the empty-slot marker of BpeCache
}

void PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  slots_.assign(cap, Slot{kEmpty, 0});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  size_ = 0;
}

void PairMap::set(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  DSV3_ASSERT(2 * (size_ + 1) <= slots_.size(), "PairMap is full");
  uint64_t key = pack(a, b), val = (uint64_t(rank) << 32) | uint32_t(merged);
  for (size_t i = slot(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == key || s.key == kEmpty) {
      size_ += s.key == kEmpty;
      s = {key, val};
      return;
    }
  }
}

BpeCache::BpeCache(size_t max_entries)
    : max_entries_(std::min<size_t>(max_entries, kEntryMask - 1)) {
  index_.assign(kMinSlots, 0);
}

void BpeCache::clear() {
  index_.assign(kMinSlots, 0);
  entries_.clear();
  keys_.clear();
  ids_.clear();
}

void BpeCache::rebuild_index(size_t slots) {
  index_.assign(slots, 0);
  const size_t mask = slots - 1;
  for (size_t e = 0; e < entries_.size(); ++e) {
    const uint64_t h = entries_[e].hash;
    size_t i = h & mask;
    while (index_[i] != 0) i = (i + 1) & mask;
    index_[i] = make_slot(h, e + 1);
  }
}

bool BpeCache::find(std::string_view key, uint64_t hash, std::span<const int32_t>* ids) const {
  const size_t mask = index_.size() - 1;
  const Slot tag = Slot(hash >> 52);
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot sl = index_[i];
    if (sl == 0) return false;
    if ((sl >> kEntryBits) != tag) continue;
    const Entry& e = entries_[(sl & kEntryMask) - 1];
    if (e.hash != hash || e.key_len != key.size()) continue;
    bool inline_key = key.size() <= kInlineKey;
    const char* k = inline_key ? e.key : keys_.data() + e.spill;
    if (std::memcmp(k, key.data(), key.size()) != 0) continue;
    const int32_t* p;
    if (inline_key && e.ids_len <= kInlineIds) {
      p = e.ids;
    } else if (inline_key) {
      p = ids_.data() + e.spill;
    } else {
      uint32_t off;
      std::memcpy(&off, e.ids, sizeof(off));
      p = ids_.data() + off;
    }
    *ids = {p, e.ids_len};
    return true;
  }
}

void BpeCache::insert(std::string_view key, uint64_t hash, std::span<const int32_t> ids) {
  if (key.size() > kMaxKeyBytes || ids.size() > 0xFFFF) return;
  if (entries_.size() >= max_entries_) clear();
  if (2 * (entries_.size() + 1) > index_.size()) rebuild_index(2 * index_.size());
  Entry& e = entries_.emplace_back();
  e.hash = hash;
  e.key_len = uint16_t(key.size());
  e.ids_len = uint16_t(ids.size());
  bool inline_key = key.size() <= kInlineKey;
  if (inline_key) {
    std::memcpy(e.key, key.data(), key.size());
  } else {
    e.spill = uint32_t(keys_.size());
    keys_.append(key);
  }
  if (inline_key && ids.size() <= kInlineIds) {
    std::memcpy(e.ids, ids.data(), ids.size() * sizeof(int32_t));
  } else {
    // Spilled ids: their offset goes in spill (inline key) or in the first ids slot.
    uint32_t off = uint32_t(ids_.size());
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    if (inline_key)
      e.spill = off;
    else
      std::memcpy(e.ids, &off, sizeof(off));
  }
  const size_t mask = index_.size() - 1;
  size_t i = hash & mask;
  while (index_[i] != 0) i = (i + 1) & mask;
  index_[i] = make_slot(hash, entries_.size());
}

Bpe Bpe::from_json(const nlohmann::json& m) {
  std::string type = m.value("type", "BPE");
  DSV3_CHECK(type == "BPE", "tokenizer.json: model type '{}' is not supported (only BPE)", type);
  DSV3_CHECK(m.contains("vocab") && m.contains("merges"),
             "tokenizer.json: BPE model without vocab or merges");
  auto dropout = m.value("dropout", nlohmann::json());
  DSV3_CHECK(dropout.is_null() || dropout.get<double>() == 0.0,
             "tokenizer.json: BPE dropout {} is not supported (it makes encoding random)",
             dropout.dump());
  Bpe bpe;
  auto opt = [&](const char* key) -> std::optional<std::string> {
    if (!m.contains(key) || m.at(key).is_null()) return std::nullopt;
    return m.at(key).get<std::string>();
  };
  bpe.unk_token_ = opt("unk_token");
  bpe.prefix_ = opt("continuing_subword_prefix");
  bpe.suffix_ = opt("end_of_word_suffix");
  bpe.fuse_unk_ = m.value("fuse_unk", false);
  bpe.byte_fallback_ = m.value("byte_fallback", false);
  bpe.ignore_merges_ = m.value("ignore_merges", false);

  int64_t max_id = -1;
  for (auto it = m.at("vocab").begin(); it != m.at("vocab").end(); ++it) {
    // A float id would be cast to an integer, undefined out of range (fuzz_tokenizer_json).
    DSV3_CHECK(it.value().is_number_integer(),
               "tokenizer.json: vocab id {} of '{}' is not an integer", it.value().dump(),
               it.key());
    int64_t id = it.value().get<int64_t>();
    DSV3_CHECK(id >= 0 && id < (int64_t(1) << 31), "tokenizer.json: vocab id {} of '{}' is invalid",
               id, it.key());
    bpe.vocab_[it.key()] = int32_t(id);
    max_id = std::max(max_id, id);
  }
  // id_to_token_ is dense: one vocab id of 444444479 in a 4 KB file asked for 14 GB
  // (fuzz_tokenizer_json). Real vocabularies number their tokens 0..n-1.
  const int64_t entries = int64_t(m.at("vocab").size());
  DSV3_CHECK(max_id < entries + (int64_t(1) << 20),
             "tokenizer.json: vocab id {} is far beyond the vocabulary's {} entries (ids must be "
             "numbered from 0 without large gaps)",
             max_id, entries);
  bpe.id_to_token_.resize(size_t(max_id + 1));
  bpe.has_id_.assign(size_t(max_id + 1), false);
  for (const auto& [tok, id] : bpe.vocab_) {
    bpe.id_to_token_[id] = tok;
    bpe.has_id_[id] = true;
  }
  const auto& merges = m.at("merges");
  bpe.merges_.reserve(merges.size());
  uint32_t rank = 0;
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& mj = merges[i];
    if (mj.is_string()) {
      std::string s = mj.get<std::string>();
      size_t sp = s.find(' ');
      DSV3_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                 "tokenizer.json: at /model/merges/{}: merge '{}' is not two tokens separated by "
                 "one space",
                 i, s);
      bpe.add_merge(s.substr(0, sp), s.substr(sp + 1), rank++);
    } else {
      DSV3_CHECK(mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string(),
                 "tokenizer.json: at /model/merges/{}: merge {} is not a pair of strings", i,
                 mj.dump());
      bpe.add_merge(mj[0].get<std::string>(), mj[1].get<std::string>(), rank++);
    }
  }
  bpe.finish();
  return bpe;
}

Bpe Bpe::from_tokens(const std::vector<std::string>& id_to_token,
                     const std::vector<std::pair<std::string, std::string>>& merges) {
  Bpe bpe;
  bpe.id_to_token_ = id_to_token;
  bpe.has_id_.assign(id_to_token.size(), true);
  for (size_t i = 0; i < id_to_token.size(); ++i) bpe.vocab_[id_to_token[i]] = int32_t(i);
  bpe.merges_.reserve(merges.size());
  uint32_t rank = 0;
  for (const auto& [a, b] : merges) bpe.add_merge(a, b, rank++);
  bpe.finish();
  return bpe;
}

void Bpe::add_merge(const std::string& a, const std::string& b, uint32_t rank) {
  auto ia = vocab_.find(a), ib = vocab_.find(b);
  DSV3_CHECK(ia != vocab_.end() && ib != vocab_.end(),
             "tokenizer.json: merge '{} {}' uses a token missing from the vocab", a, b);
  size_t skip = prefix_ && b.compare(0, prefix_->size(), *prefix_) == 0 ? prefix_->size() : 0;
  std::string merged = a + b.substr(skip);
  auto im = vocab_.find(merged);
  DSV3_CHECK(im != vocab_.end(),
             "tokenizer.json: merge '{} {}' gives '{}', which is not in the vocab", a, b, merged);
  merges_.set(ia->second, ib->second, rank, im->second);
}

void Bpe::finish() {
  const auto& alpha = byte_level_alphabet();
  byte_fast_ = !prefix_ && !suffix_;
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(alpha.byte_to_utf8[b]);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    if (it == vocab_.end()) byte_fast_ = false;
  }
  find_whole_chars();
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

// The initial symbols of a word (HF BPE::merge_word before merge_all).
void Bpe::word_symbols(std::string_view w, std::vector<int32_t>& syms) const {
  auto* p = reinterpret_cast<const unsigned char*>(w.data());
  std::optional<int32_t> unk;
  auto unk_id = [&]() -> std::optional<int32_t> { return token_to_id(*unk_token_); };
  std::string s;
  for (size_t i = 0; i < w.size();) {
    size_t len = utf8_lead_length(p[i]);
    len = std::min(len, w.size() - i);
    s.assign(w.substr(i, len));
    bool first = i == 0, last = i + len == w.size();
    i += len;
    if (!first && prefix_) s.insert(0, *prefix_);
    if (last && suffix_) s += *suffix_;
    if (auto id = token_to_id(s)) {
      if (unk) syms.push_back(*unk);
      unk.reset();
      syms.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char c : s) {
        auto id = token_to_id(fmt::format("<0x{:02X}>", c));
        if (!id) break;
        bytes.push_back(*id);
      }
      if (bytes.size() == s.size()) {
        syms.insert(syms.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unk_token_) {
      if (unk && !fuse_unk_) syms.push_back(*unk);
      if (!unk || !fuse_unk_) {
        unk = unk_id();
        DSV3_CHECK(unk, "tokenizer.json: unk_token '{}' is not in the vocab", *unk_token_);
      }
    }
  }
  if (unk) syms.push_back(*unk);
}

// Lowest rank first, leftmost first, by rescanning: for pieces of up to kShortMax symbols.
// Symbols stay in place (a merged-away one gets the rank kNone and leaves the linked list), so
// array order is piece order and the leftmost lowest rank is the first index holding the
// minimum, which AVX-512 finds over 16 ranks per instruction; each merge then looks up only the
// two pairs it changed.
void Bpe::merge_short(std::vector<int32_t>& syms) const {
  constexpr uint32_t kNone = ~0u;
  alignas(64) uint32_t ranks[kShortMax];
  int32_t merged[kShortMax];
  int16_t next[kShortMax], prev[kShortMax];
  const int n = int(syms.size());
  if (n < 2) return;  // nothing to merge (word_symbols may give none: unknown chars, no unk)
  const int vecs = (n + 15) / 16;
  auto look = [&](int i) {
    uint32_t r;
    int32_t m;
    if (next[i] >= 0 && merges_.find(syms[i], syms[next[i]], &r, &m)) {
      ranks[i] = r;
      merged[i] = m;
    } else {
      ranks[i] = kNone;
    }
  };
  for (int i = 0; i < n; ++i) {
    next[i] = int16_t(i + 1 < n ? i + 1 : -1);
    prev[i] = int16_t(i - 1);
  }
  for (int i = 0; i < n; ++i) look(i);
  for (int i = n; i < vecs * 16; ++i) ranks[i] = kNone;
  for (;;) {
    __m512i mn = _mm512_load_si512(ranks);
    for (int v = 1; v < vecs; ++v) mn = _mm512_min_epu32(mn, _mm512_load_si512(ranks + 16 * v));
    const uint32_t best_rank = _mm512_reduce_min_epu32(mn);
    if (best_rank == kNone) break;
    const __m512i target = _mm512_set1_epi32(int32_t(best_rank));
    int best = 0;
    for (int v = 0; v < vecs; ++v) {
      const __mmask16 eq = _mm512_cmpeq_epu32_mask(_mm512_load_si512(ranks + 16 * v), target);
      if (eq) {
        best = 16 * v + __builtin_ctz(eq);
        break;
      }
    }
    const int right = next[best];
    syms[best] = merged[best];
    ranks[right] = kNone;
    next[best] = next[right];
    if (next[right] >= 0) prev[next[right]] = int16_t(best);
    look(best);
    if (prev[best] >= 0) look(prev[best]);
  }
  int out = 0;
  for (int i = 0; i >= 0; i = next[i]) syms[out++] = syms[i];
  syms.resize(size_t(out));
}

// HF's Word::merge_all: a heap of (rank, position) over a linked list of symbols. The list and
// the heap live in per-thread buffers (no allocation per piece).
void Bpe::merge_long(std::vector<int32_t>& syms) const {
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Cand {
    uint32_t rank;
    int32_t pos, merged;
    // Min-heap order for std::push_heap/pop_heap (which build max-heaps): lowest rank, then
    // leftmost position, on top.
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Sym> s;
  thread_local std::vector<Cand> heap;
  const int32_t n = int32_t(syms.size());
  s.resize(size_t(n));
  heap.clear();
  for (int32_t i = 0; i < n; ++i) s[i] = {syms[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  auto push = [&](int32_t pos) {
    uint32_t r;
    int32_t m;
    if (s[pos].next >= 0 && merges_.find(s[pos].id, s[s[pos].next].id, &r, &m)) {
      heap.push_back({r, pos, m});
      std::push_heap(heap.begin(), heap.end());
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Cand c = heap.back();
    heap.pop_back();
    Sym& left = s[c.pos];
    if (!left.alive || left.next < 0) continue;
    uint32_t r;
    int32_t m;
    if (!merges_.find(left.id, s[left.next].id, &r, &m) || m != c.merged) continue;
    Sym& right = s[left.next];
    left.id = c.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) s[right.next].prev = c.pos;
    if (left.prev >= 0) push(left.prev);
    push(c.pos);
  }
  syms.clear();
  for (int32_t i = 0; i >= 0 && i < n; i = s[i].next) syms.push_back(s[i].id);
}

void Bpe::encode_uncached(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const {
  encode_with(piece, raw_bytes, true, out);
}

void Bpe::encode_reference(std::string_view piece, bool raw_bytes,
                           std::vector<int32_t>& out) const {
  encode_with(piece, raw_bytes, false, out);
}

void Bpe::encode_with(std::string_view piece, bool raw_bytes, bool fast,
                      std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> syms;
  syms.clear();
  std::string mapped;
  if (raw_bytes && (!byte_fast_ || ignore_merges_)) {
    mapped = byte_level_encode(piece);
    piece = mapped;
    raw_bytes = false;
  }
  if (ignore_merges_) {
    if (auto id = token_to_id(piece)) {
      out.push_back(*id);
      return;
    }
  }
  if (raw_bytes)
    byte_symbols(piece, fast, syms);
  else
    word_symbols(piece, syms);
  if (fast && syms.size() <= size_t(kShortMax))
    merge_short(syms);
  else
    merge_long(syms);
  out.insert(out.end(), syms.begin(), syms.end());
}

void Bpe::encode(std::string_view piece, uint64_t h, bool raw_bytes, BpeCache& cache,
                 std::vector<int32_t>& out) const {
  if (piece.size() > BpeCache::kMaxKeyBytes) return encode_uncached(piece, raw_bytes, out);
  std::span<const int32_t> hit;
  if (cache.find(piece, h, &hit)) {
    out.insert(out.end(), hit.begin(), hit.end());
    return;
  }
  size_t start = out.size();
  encode_uncached(piece, raw_bytes, out);
  cache.insert(piece, h, std::span<const int32_t>(out.data() + start, out.size() - start));
}

}  // namespace dsv3::tok
