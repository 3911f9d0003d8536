// Non-cryptographic 64-bit hashes: Hasher64 (checksums of checkpoints and data shards, prefix
// keys of the paged KV cache) and FNV-1a of a name (the per-parameter seed of random inits).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace dsv3 {

// A fast non-cryptographic 64-bit hash (8 bytes per multiply-rotate step, murmur-style final
// mix). Streaming: any split of the input into update() calls gives the same digest.
class Hasher64 {
 public:
  explicit Hasher64(uint64_t seed = 0);
  void update(const void* data, size_t n);
  void update_u64(uint64_t v) { update(&v, sizeof v); }
  void update_str(std::string_view s) {
    update_u64(s.size());
    update(s.data(), s.size());
  }
  uint64_t digest() const;

 private:
  void mix(uint64_t w);
  uint64_t h_;
  uint64_t len_ = 0;
  uint8_t buf_[8] = {};
  size_t nbuf_ = 0;
};

uint64_t hash64(const void* data, size_t n, uint64_t seed = 0);

// FNV-1a over the bytes of s: the seed offset a parameter's name gives its random init (its
// values are fixed by the checkpoints that tests compare against).
uint64_t fnv1a(std::string_view s);

}  // namespace dsv3
