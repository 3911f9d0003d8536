// YaRN RoPE tables; see rope.hpp. Angles are computed in double, then rounded.
#include "model/rope.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/memory.hpp"

namespace dsv3::model {

namespace {
double correction_dim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2 * M_PI)) / (2 * std::log(base));
}
double yarn_mscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim, half = dim / 2;
  std::vector<double> f(half);
  for (int64_t i = 0; i < half; ++i) {
    // As the reference: base ** (float32(2i) / dim), rounded through float32.
    float expo = float(2 * i) / float(dim);
    f[i] = 1.0 / double(float(std::pow(double(c.rope_theta), double(expo))));
  }
  if (!c.rope_scaling.yarn) return f;
  const auto& y = c.rope_scaling;
  double orig = double(y.original_max_position_embeddings);
  double low = std::floor(correction_dim(y.beta_fast, dim, c.rope_theta, orig));
  double high = std::ceil(correction_dim(y.beta_slow, dim, c.rope_theta, orig));
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    double smooth = 1.0 - ramp;  // 1: keep the original frequency (fast rotations)
    f[i] = f[i] / y.factor * (1 - smooth) + f[i] * smooth;
  }
  return f;
}

std::vector<float> rope_cos_sin(const ModelConfig& c, int64_t max_pos) {
  auto inv = rope_inv_freq(c);
  const int64_t half = int64_t(inv.size());
  double m = 1.0;
  if (c.rope_scaling.yarn && c.rope_scaling.mscale_all_dim != 0)
    m = yarn_mscale(c.rope_scaling.factor, c.rope_scaling.mscale) /
        yarn_mscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
  check_fits_in_memory(double(max_pos) * double(half) * 2 * sizeof(float),
                       fmt::format("the RoPE table of {} positions", max_pos));
  std::vector<float> t(size_t(max_pos * half * 2));
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      double a = double(p) * double(float(inv[i]));
      t[(p * half + i) * 2] = float(std::cos(a) * m);
      t[(p * half + i) * 2 + 1] = float(std::sin(a) * m);
    }
  return t;
}

}  // namespace dsv3::model
