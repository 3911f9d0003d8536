// The block pool of the paged latent KV cache: which of the cache's blocks are free, which are
// referenced by sequences (ref-counted: a cached prefix block is shared), and the prefix cache,
// a map from the content hash of a full block to the block holding it. The hash of block j of a
// sequence chains the hash of block j−1 with the block's tokens (and, when the cache also holds
// the MTP layer, the token after the block, which the MTP entry of its last position depends
// on); the key tokens are kept and compared, so a hash collision never shares a wrong block.
// Unreferenced cached blocks stay reusable until allocation evicts them, least recently used
// first.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace dsv3::serve {

struct BlockKey {
  uint64_t hash = 0;            // chained: parent hash and tokens
  uint64_t parent = 0;          // hash of the previous block (0 for the first)
  std::vector<int32_t> tokens;  // the block's tokens (+ the next token with MTP)
};

// The key of a full block from its parent's hash and its tokens.
BlockKey block_key(uint64_t parent, const int32_t* tokens, int64_t n);

class BlockPool {
 public:
  explicit BlockPool(int64_t blocks);
  int64_t total() const { return int64_t(ref_.size()); }
  // Blocks an allocation can still get (free ones and unreferenced cached ones).
  int64_t available() const { return int64_t(free_.size() + lru_.size()); }
  // Blocks referenced by at least one sequence.
  int64_t referenced() const { return total() - available(); }
  // A block with one reference, evicting the least recently used cached block when none is
  // free; -1 when every block is referenced.
  int32_t allocate();
  // Drops one reference; an unreferenced cached block stays in the prefix cache (most recently
  // used), any other returns to the free list.
  void release(int32_t b);
  // The cached block holding `key` with one more reference, or -1.
  int32_t lookup(const BlockKey& key);
  // Records that block b (referenced, full) holds `key`, unless another block already does.
  void insert(int32_t b, const BlockKey& key);
  int64_t cached() const { return int64_t(by_hash_.size()); }

 private:
  void uncache(int32_t b);

  std::vector<int32_t> ref_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // unreferenced cached blocks, least recently used first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
  std::vector<bool> in_lru_;
  std::vector<BlockKey> key_;  // of cached blocks
  std::vector<bool> has_key_;
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace dsv3::serve
