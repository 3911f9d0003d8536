// Threading: one OpenMP pool shared with oneDNN. parallel_for splits [0, n) into contiguous
// chunks, one per thread, so each thread touches one range of memory.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace dsv3 {

inline int num_threads() {
  return omp_get_max_threads();
}
inline void set_num_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

// fn(begin, end) is called on disjoint ranges covering [0, n). Runs inline when n is small or
// when already inside a parallel region.
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t min_chunk = 1) {
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  int64_t chunks = std::min<int64_t>(nt, (n + min_chunk - 1) / std::max<int64_t>(min_chunk, 1));
  if (chunks <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  }
}

}  // namespace dsv3
