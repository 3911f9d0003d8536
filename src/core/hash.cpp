// Hasher64 and fnv1a; see hash.hpp.
#include "core/hash.hpp"

#include <cstring>

namespace dsv3 {
namespace {

constexpr uint64_t kP1 = 0x9e3779b185ebca87ull, kP2 = 0xc2b2ae3d27d4eb4full;

inline uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

}  // namespace

Hasher64::Hasher64(uint64_t seed) : h_(seed ^ 0x27d4eb2f165667c5ull) {}

void Hasher64::mix(uint64_t w) {
  h_ = rotl(h_ ^ (w * kP1), 31) * kP2;
}

void Hasher64::update(const void* data, size_t n) {
  auto* p = static_cast<const uint8_t*>(data);
  len_ += n;
  while (nbuf_ > 0 && nbuf_ < 8 && n > 0) {
    buf_[nbuf_++] = *p++;
    --n;
  }
  if (nbuf_ == 8) {
    uint64_t w;
    std::memcpy(&w, buf_, 8);
    mix(w);
    nbuf_ = 0;
  }
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    mix(w);
  }
  for (; n > 0; --n) buf_[nbuf_++] = *p++;
}

uint64_t Hasher64::digest() const {
  uint64_t h = h_;
  uint64_t tail = 0;
  std::memcpy(&tail, buf_, nbuf_);
  h = rotl(h ^ (tail * kP1), 31) * kP2;
  h ^= len_ * kP1;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

uint64_t hash64(const void* data, size_t n, uint64_t seed) {
  Hasher64 h(seed);
  h.update(data, n);
  return h.digest();
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

}  // namespace dsv3
