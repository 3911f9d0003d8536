// The BPE model of tokenizer.json ("model": {"type": "BPE"}) with HF tokenizers' semantics
// (models/bpe/model.rs, word.rs): vocab, merges in the "a b" or ["a", "b"] form (a repeated pair
// keeps its last rank), continuing_subword_prefix, end_of_word_suffix, unk_token/fuse_unk,
// byte_fallback and ignore_merges. Pieces are merged lowest rank first, leftmost first, starting
// from whole characters where that provably gives the same ids (bpe_whole_chars.cpp); results
// are memoised per piece in a BpeCache.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dsv3::tok {

uint64_t hash_bytes(std::string_view s);

// Open-addressing map from a token-id pair to (rank, merged id).
class PairMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites.
  void set(int32_t a, int32_t b, uint32_t rank, int32_t merged);
  // Returns false when the pair has no merge.
  bool find(int32_t a, int32_t b, uint32_t* rank, int32_t* merged) const {
    uint64_t key = pack(a, b);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) {
        *rank = uint32_t(s.val >> 32);
        *merged = int32_t(uint32_t(s.val));
        return true;
      }
      if (s.key == kEmpty) return false;
    }
  }
  size_t size() const { return size_; }
  // f(a, b, rank, merged) for every pair, in no particular order.
  template <class F>
  void for_each(F&& f) const {
    for (const Slot& s : slots_)
      if (s.key != kEmpty)
        f(int32_t(uint32_t(s.key >> 32)), int32_t(uint32_t(s.key)), uint32_t(s.val >> 32),
          int32_t(uint32_t(s.val)));
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  struct Slot {  // key and value side by side: one cache line per probe
    uint64_t key, val;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 64;
};

// Memo of piece -> ids. A compact index (4 bytes a slot: a hash tag and an entry number) points
// into entries kept in insertion order; short pieces and their ids live inside their 64-byte
// entry, longer ones spill into arenas. A miss (most lookups of a first pass over new text)
// touches only the index, which stays small enough for the caches: sized to the entries (load
// ≤ 1/2, doubling from 4,096 slots). A 32 MiB table of entries sized for the maximum made
// every lookup a DRAM miss and ran the first pass 30% slower. Not thread-safe: one per thread
// (Tokenizer keeps a pool).
class BpeCache {
 public:
  explicit BpeCache(size_t max_entries = size_t(1) << 18);
  bool find(std::string_view key, uint64_t hash, std::span<const int32_t>* ids) const;
  // Prefetches for a later find of `hash`: its index slot, or (once that slot is in the cache)
  // the entry it points to. A hit costs two dependent cache misses otherwise.
  void prefetch_slot(uint64_t hash) const {
    __builtin_prefetch(index_.data() + (hash & (index_.size() - 1)));
  }
  void prefetch_entry(uint64_t hash) const {
    const Slot sl = index_[hash & (index_.size() - 1)];
    if (sl != 0 && (sl >> kEntryBits) == Slot(hash >> 52))
      __builtin_prefetch(entries_.data() + ((sl & kEntryMask) - 1));
  }
  void insert(std::string_view key, uint64_t hash, std::span<const int32_t> ids);
  static constexpr size_t kMaxKeyBytes = 256;  // longer pieces are not cached

 private:
  static constexpr size_t kInlineKey = 24, kInlineIds = 6, kMinSlots = 4096;
  // An index slot: the top 12 bits of the hash, then the entry number + 1 (0: empty).
  using Slot = uint32_t;
  static constexpr int kEntryBits = 20;
  static constexpr Slot kEntryMask = (Slot(1) << kEntryBits) - 1;
  static Slot make_slot(uint64_t hash, size_t entry1) {
    return (Slot(hash >> 52) << kEntryBits) | Slot(entry1);
  }
  struct alignas(64) Entry {
    uint64_t hash = 0;
    uint16_t key_len, ids_len;
    uint32_t spill;  // offset in keys_ / ids_ when not inline
    char key[kInlineKey];
    int32_t ids[kInlineIds];
  };
  void clear();
  void rebuild_index(size_t slots);
  std::vector<Slot> index_;
  std::vector<Entry> entries_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t max_entries_;
};

class Bpe {
 public:
  // `model` is the "model" value of tokenizer.json.
  static Bpe from_json(const nlohmann::json& model);
  // A plain byte-level BPE (what the trainer makes): id_to_token[i] is token i; merges in rank
  // order.
  static Bpe from_tokens(const std::vector<std::string>& id_to_token,
                         const std::vector<std::pair<std::string, std::string>>& merges);

  // Appends the ids of one pre-tokenized piece. raw_bytes: the piece is raw bytes that the
  // byte-level alphabet still has to map (see PreTokenizer::model_maps_bytes).
  void encode(std::string_view piece, bool raw_bytes, BpeCache& cache,
              std::vector<int32_t>& out) const {
    encode(piece, hash_bytes(piece), raw_bytes, cache, out);
  }
  // Same with the piece's hash_bytes already computed.
  void encode(std::string_view piece, uint64_t hash, bool raw_bytes, BpeCache& cache,
              std::vector<int32_t>& out) const;
  // Same without memo (reference for tests, and for long pieces).
  void encode_uncached(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const;
  // The plain algorithm for tests: every piece starts from single bytes (no whole-character
  // start, see whole_chars_) and merges in HF's heap loop.
  void encode_reference(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const;
  // How many characters below U+10000 encoding starts from as one token: in any piece, and in
  // pieces of 3-byte characters only (see bpe_whole_chars.cpp).
  std::array<size_t, 2> whole_char_counts() const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token of id, or nullptr when the vocab has no such id.
  const std::string* id_to_token(int32_t id) const;
  int32_t id_bound() const { return int32_t(id_to_token_.size()); }  // max id + 1
  const PairMap& merges() const { return merges_; }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return hash_bytes(s); }
  };
  void finish();
  void add_merge(const std::string& a, const std::string& b, uint32_t rank);
  void word_symbols(std::string_view word, std::vector<int32_t>& syms) const;
  void encode_with(std::string_view piece, bool raw_bytes, bool fast,
                   std::vector<int32_t>& out) const;
  void byte_symbols(std::string_view piece, bool whole_chars, std::vector<int32_t>& syms) const;
  void find_whole_chars();
  static constexpr int kShortMax = 128;  // merge_short up to this many symbols, merge_long above
  void merge_short(std::vector<int32_t>& syms) const;
  void merge_long(std::vector<int32_t>& syms) const;

  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  PairMap merges_;
  std::array<int32_t, 256> byte_ids_{};
  // Token of each 2- or 3-byte character (by code point) that BPE provably assembles before any
  // merge crosses its edges, or -1: in any piece, and in pieces of 3-byte characters only. Empty
  // unless byte_fast_ (see bpe_whole_chars.cpp).
  std::vector<int32_t> whole_chars_, whole_chars_run3_;
  bool byte_fast_ = false;  // every byte's alphabet char is a token and no prefix/suffix is set
  std::optional<std::string> unk_token_, prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
};

}  // namespace dsv3::tok
