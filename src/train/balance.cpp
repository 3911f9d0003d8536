// Auxiliary-loss-free bias update, load statistics and the sequence-wise balance loss, DeepSeek-V3
// report §2.1.2 (eqs. 16-20). See balance.hpp.
#include "train/balance.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::train {

void update_bias(float* bias, const int64_t* load, int64_t E, float gamma) {
  if (E <= 0) return;
  int64_t total = 0;
  for (int64_t i = 0; i < E; ++i) total += load[i];
  // load_i > total/E  <=>  load_i·E > total: exact, no rounding of the mean.
  for (int64_t i = 0; i < E; ++i) {
    const int64_t scaled = load[i] * E;
    if (scaled > total) {
      bias[i] -= gamma;
    } else if (scaled < total) {
      bias[i] += gamma;
    }
  }
}

double max_vio(const int64_t* load, int64_t E) {
  if (E <= 0) return 0;
  int64_t total = 0, top = load[0];
  for (int64_t i = 0; i < E; ++i) {
    total += load[i];
    top = std::max(top, load[i]);
  }
  if (total <= 0) return 0;
  const double mean = double(total) / double(E);
  return (double(top) - mean) / mean;
}

LoadStats load_stats(const int32_t* indices, int64_t N, int64_t K, int64_t E) {
  LoadStats s;
  s.load.assign(size_t(E), 0);
  for (int64_t j = 0; j < N * K; ++j) {
    const int32_t e = indices[j];
    DSV3_CHECK(e >= 0 && e < E, "expert index {} at token {} slot {} is outside [0, {})", e, j / K,
               j % K, E);
    ++s.load[size_t(e)];
  }
  s.max_vio = max_vio(s.load.data(), E);
  return s;
}

}  // namespace dsv3::train
