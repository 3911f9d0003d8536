// Scratch buffers that are reused across calls.
#pragma once
#include <cstddef>
#include <vector>

namespace dsv3 {

// Grows v to at least n elements (never shrinks) and returns its data: steady-state steps of a
// loop that sizes its scratch this way do not allocate.
template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace dsv3
