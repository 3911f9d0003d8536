// Block pool and prefix cache of the paged KV cache; see kv_blocks.hpp.
#include "serve/kv_blocks.hpp"

#include "core/error.hpp"
#include "core/hash.hpp"

namespace dsv3::serve {

BlockKey block_key(uint64_t parent, const int32_t* tokens, int64_t n) {
  Hasher64 hs(parent);
  hs.update(tokens, size_t(n) * sizeof(int32_t));
  const uint64_t h = hs.digest();
  BlockKey k;
  k.hash = h ? h : 1;
  k.parent = parent;
  k.tokens.assign(tokens, tokens + n);
  return k;
}

BlockPool::BlockPool(int64_t blocks)
    : ref_(size_t(blocks), 0),
      lru_pos_(size_t(blocks)),
      in_lru_(size_t(blocks), false),
      key_(size_t(blocks)),
      has_key_(size_t(blocks), false) {
  DSV3_CHECK(blocks > 0, "the KV cache needs at least one block");
  for (int64_t b = blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

int32_t BlockPool::allocate() {
  int32_t b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    lru_.pop_front();
    in_lru_[size_t(b)] = false;
    uncache(b);
  } else {
    return -1;
  }
  DSV3_ASSERT(ref_[size_t(b)] == 0, "allocated a referenced block");
  ref_[size_t(b)] = 1;
  return b;
}

void BlockPool::release(int32_t b) {
  DSV3_ASSERT(b >= 0 && b < total() && ref_[size_t(b)] > 0, "release of a free block");
  if (--ref_[size_t(b)] > 0) return;
  if (has_key_[size_t(b)]) {
    lru_.push_back(b);
    lru_pos_[size_t(b)] = std::prev(lru_.end());
    in_lru_[size_t(b)] = true;
  } else {
    free_.push_back(b);
  }
}

int32_t BlockPool::lookup(const BlockKey& key) {
  auto it = by_hash_.find(key.hash);
  if (it == by_hash_.end()) return -1;
  const int32_t b = it->second;
  const BlockKey& k = key_[size_t(b)];
  if (k.parent != key.parent || k.tokens != key.tokens) return -1;
  if (in_lru_[size_t(b)]) {
    lru_.erase(lru_pos_[size_t(b)]);
    in_lru_[size_t(b)] = false;
  }
  ++ref_[size_t(b)];
  return b;
}

void BlockPool::insert(int32_t b, const BlockKey& key) {
  DSV3_ASSERT(ref_[size_t(b)] > 0, "caching an unreferenced block");
  if (has_key_[size_t(b)] || by_hash_.count(key.hash)) return;
  by_hash_[key.hash] = b;
  key_[size_t(b)] = key;
  has_key_[size_t(b)] = true;
}

void BlockPool::uncache(int32_t b) {
  if (!has_key_[size_t(b)]) return;
  by_hash_.erase(key_[size_t(b)].hash);
  key_[size_t(b)] = {};
  has_key_[size_t(b)] = false;
}

}  // namespace dsv3::serve
