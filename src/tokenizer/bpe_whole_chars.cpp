// Whole characters: the byte-level BPE starts a piece from the token of each character that it
// provably assembles before any merge reaches across the character's edges, instead of from the
// character's bytes. Byte-level BPE otherwise spends two of every three merges of CJK text
// putting 3-byte characters together; the result is the same, ids for ids.
//
// The rule. Let c be a character whose bytes BPE merges, on their own, into the single token c,
// with R_c the highest rank among those merges. Starting from c instead of its bytes gives the
// same ids in a context when
//   (a) no token P on c's way (its bytes and intermediate merges) that begins c has a merge
//       (X, P), and none that ends c has a merge (P, Y), of rank ≤ R_c, for the X that can
//       stand left of c and the Y that can stand right of it; and
//   (b) the token c itself has no such merge (X, c) or (c, Y) of rank ≤ R_c.
// Why: while c is incomplete, its next own merge (rank ≤ R_c) is available, and c's parts go
// through the same merges in the same order as when c is alone (only pairs inside c involve
// them), so by (a) no merge across c's edges can be the lowest-ranked pair before c is whole.
// Meanwhile the byte run's other merges are the ones the whole-character start makes: the only
// pairs that start has in addition are (X, c) and (c, Y) with c still incomplete in the byte run,
// ranked above R_c by (b), hence above the pair the byte run picks (which ranks at or below c's
// pending merge). Ranks are distinct per pair and positions keep their order, so leftmost-first
// ties agree too.
//
// Two contexts. In any piece, X and Y can be any token. In a piece made only of 3-byte
// characters (any such piece; in practice the CJK runs that DeepSeek-V3's pre-tokenizer
// isolates), X can only be a token
// whose bytes end a run of 3-byte characters and Y one whose bytes begin such a run, which
// leaves out the early cross-character merges of other scripts (Hebrew's (continuation, D7),
// ...) that disqualify many CJK characters in general.
#include <algorithm>

#include "tokenizer/bpe.hpp"
#include "tokenizer/byte_level.hpp"
#include "tokenizer/utf8.hpp"

namespace dsv3::tok {
namespace {

constexpr uint32_t kNone = ~0u;

bool is_cont(unsigned char b) {
  return (b & 0xC0) == 0x80;
}
bool is_lead3(unsigned char b) {
  return (b & 0xF0) == 0xE0;
}

// Bytes that can begin a run of 3-byte characters: whole characters, then a proper prefix.
bool begins_run3(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (i % 3 == 0 ? !is_lead3(b) : !is_cont(b)) return false;
  }
  return true;
}

// Bytes that can end a run of 3-byte characters: a proper suffix, then whole characters.
bool ends_run3(const std::string& s) {
  const size_t n = s.size();
  for (size_t i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned char>(s[n - 1 - i]);
    if (i % 3 == 2 ? !is_lead3(b) : !is_cont(b)) return false;
  }
  return true;
}

// Lowest rank of a merge (t, Y) and of a merge (X, t) per token t, over the merges whose other
// side passes `other_ok`.
struct EdgeRanks {
  std::vector<uint32_t> as_left, as_right;
  uint32_t left(int32_t t) const { return size_t(t) < as_left.size() ? as_left[t] : kNone; }
  uint32_t right(int32_t t) const { return size_t(t) < as_right.size() ? as_right[t] : kNone; }
};

template <class Ok>
EdgeRanks edge_ranks(const PairMap& merges, size_t ids, Ok other_ok) {
  EdgeRanks e{std::vector<uint32_t>(ids, kNone), std::vector<uint32_t>(ids, kNone)};
  merges.for_each([&](int32_t a, int32_t b, uint32_t rank, int32_t) {
    if (size_t(a) < ids && other_ok(b, true)) e.as_left[a] = std::min(e.as_left[a], rank);
    if (size_t(b) < ids && other_ok(a, false)) e.as_right[b] = std::min(e.as_right[b], rank);
  });
  return e;
}

// A character's way to one token when BPE merges its bytes alone.
struct CharWay {
  struct Part {
    int32_t id;
    int start, end;  // byte span inside the character
  };
  std::vector<Part> seen;  // every token on the way; the last one is the character's
  uint32_t max_rank = 0;
  bool single = false;  // ends in one token
};

CharWay char_way(const PairMap& merges, const std::array<int32_t, 256>& byte_ids,
                 const std::string& bytes) {
  CharWay w;
  std::vector<CharWay::Part> parts;
  for (int i = 0; i < int(bytes.size()); ++i)
    parts.push_back({byte_ids[static_cast<unsigned char>(bytes[i])], i, i + 1});
  w.seen = parts;
  for (;;) {  // lowest rank first
    uint32_t best_rank = kNone, r;
    int32_t best_id = -1, m;
    size_t best = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i)
      if (merges.find(parts[i].id, parts[i + 1].id, &r, &m) && r < best_rank) {
        best_rank = r;
        best_id = m;
        best = i;
      }
    if (best_rank == kNone) break;
    w.max_rank = std::max(w.max_rank, best_rank);
    parts[best] = {best_id, parts[best].start, parts[best + 1].end};
    parts.erase(parts.begin() + std::ptrdiff_t(best) + 1);
    w.seen.push_back(parts[best]);
  }
  w.single = parts.size() == 1;
  return w;
}

// Conditions (a) and (b) of the file comment against one context's edge ranks.
bool whole_in(const CharWay& w, const EdgeRanks& e, int len) {
  const int32_t c = w.seen.back().id;
  if (e.left(c) <= w.max_rank || e.right(c) <= w.max_rank) return false;
  for (const auto& p : w.seen) {
    if (p.start == 0 && p.end == len) continue;  // c itself
    if (p.start == 0 && e.right(p.id) <= w.max_rank) return false;
    if (p.end == len && e.left(p.id) <= w.max_rank) return false;
  }
  return true;
}

}  // namespace

void Bpe::find_whole_chars() {
  whole_chars_.clear();
  whole_chars_run3_.clear();
  if (!byte_fast_) return;
  const size_t ids = id_to_token_.size();
  // Which tokens may stand next to a 3-byte character inside a run of them.
  std::vector<uint8_t> begins(ids, 1), ends(ids, 1);
  std::string raw;
  for (size_t t = 0; t < ids; ++t) {
    raw.clear();
    if (!has_id_[t] || !byte_level_decode(id_to_token_[t], raw)) continue;  // keep: may stand
    begins[t] = begins_run3(raw);
    ends[t] = ends_run3(raw);
  }
  const EdgeRanks any = edge_ranks(merges_, ids, [](int32_t, bool) { return true; });
  const EdgeRanks run3 = edge_ranks(merges_, ids, [&](int32_t other, bool other_is_right) {
    if (size_t(other) >= ids) return true;
    return bool(other_is_right ? begins[other] : ends[other]);
  });
  whole_chars_.assign(0x10000, -1);
  whole_chars_run3_.assign(0x10000, -1);
  std::string bytes;
  for (uint32_t cp = 0x80; cp < 0x10000; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;  // surrogates: not characters
    bytes.clear();
    utf8_append(bytes, cp);
    const CharWay w = char_way(merges_, byte_ids_, bytes);
    if (!w.single) continue;
    const int len = int(bytes.size());
    if (whole_in(w, any, len)) whole_chars_[cp] = w.seen.back().id;
    if (len == 3 && whole_in(w, run3, len)) whole_chars_run3_[cp] = w.seen.back().id;
  }
}

std::array<size_t, 2> Bpe::whole_char_counts() const {
  auto count = [](const std::vector<int32_t>& v) {
    return size_t(std::count_if(v.begin(), v.end(), [](int32_t t) { return t >= 0; }));
  };
  return {count(whole_chars_), count(whole_chars_run3_)};
}

void Bpe::byte_symbols(std::string_view piece, bool whole_chars, std::vector<int32_t>& syms) const {
  auto* p = reinterpret_cast<const unsigned char*>(piece.data());
  const size_t n = piece.size();
  if (!whole_chars || whole_chars_.empty()) {
    for (size_t i = 0; i < n; ++i) syms.push_back(byte_ids_[p[i]]);
    return;
  }
  auto cp3 = [&](size_t i) {
    return (uint32_t(p[i] & 0x0F) << 12) | (uint32_t(p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
  };
  // A run of well-formed 3-byte characters only (a CJK run).
  bool run3 = n % 3 == 0;
  for (size_t i = 0; run3 && i < n; i += 3)
    run3 = is_lead3(p[i]) && is_cont(p[i + 1]) && is_cont(p[i + 2]) && cp3(i) >= 0x800;
  if (run3) {
    for (size_t i = 0; i < n; i += 3) {
      const int32_t t = whole_chars_run3_[cp3(i)];
      if (t >= 0) {
        syms.push_back(t);
      } else {
        for (size_t k = i; k < i + 3; ++k) syms.push_back(byte_ids_[p[k]]);
      }
    }
    return;
  }
  for (size_t i = 0; i < n;) {
    uint32_t cp = 0;
    // utf8_decode rejects overlong forms and surrogates, which are not a character's bytes.
    const size_t len = p[i] < 0x80 ? 1 : utf8_decode(p + i, n - i, &cp);
    const int32_t t = len == 2 || len == 3 ? whole_chars_[cp] : -1;
    if (t >= 0) {
      syms.push_back(t);
      i += len;
    } else {
      syms.push_back(byte_ids_[p[i]]);
      ++i;
    }
  }
}

}  // namespace dsv3::tok
