// Scratch buffers that are reused across calls.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv3 {

// Grows v to at least n elements (never shrinks) and returns its data: steady-state steps of a
// loop that sizes its scratch this way do not allocate.
template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// The first 64-byte boundary at or after p (aligned vector loads, no load split over two cache
// lines): the buffer needs 64 bytes of slack for it.
template <typename T>
T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

// As grow, for n elements starting at a 64-byte boundary (v gets 64 bytes of slack).
template <typename T>
T* grow_aligned64(std::vector<T>& v, size_t n) {
  return align64(grow(v, n + 64 / sizeof(T)));
}

}  // namespace dsv3
