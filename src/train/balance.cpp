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

namespace {

// One sequence: scores [T, E], indices [T, K]; adds scale·dL_seq/ds into dscores when non-null.
// Returns L_seq / α = Σ_i f_i·P_i; f and P are scratch of E entries.
double balance_sequence(const float* scores, const int32_t* indices, int64_t T, int64_t E,
                        int64_t K, double grad_scale, float* dscores, std::vector<double>& f,
                        std::vector<double>& P) {
  std::fill(f.begin(), f.end(), 0.0);
  std::fill(P.begin(), P.end(), 0.0);
  for (int64_t j = 0; j < T * K; ++j) {
    const int32_t e = indices[j];
    DSV3_CHECK(e >= 0 && e < E, "expert index {} at token {} slot {} is outside [0, {})", e, j / K,
               j % K, E);
    f[size_t(e)] += 1.0;
  }
  const double fscale = double(E) / double(K * T);
  for (auto& x : f) x *= fscale;
  for (int64_t t = 0; t < T; ++t) {
    const float* s = scores + t * E;
    double sum = 0;
    for (int64_t i = 0; i < E; ++i) sum += s[i];
    const double inv = 1.0 / sum;
    for (int64_t i = 0; i < E; ++i) P[size_t(i)] += s[i] * inv;
  }
  double loss = 0;
  for (int64_t i = 0; i < E; ++i) loss += f[size_t(i)] * P[size_t(i)] / double(T);
  if (dscores) {
    // L = c·Σ_i f_i·s_i/S with S = Σ_j s_j, c = grad_scale (α/(B·T)):
    // dL/ds_k = c·(f_k − Σ_i f_i·s'_i) / S.
    for (int64_t t = 0; t < T; ++t) {
      const float* s = scores + t * E;
      float* d = dscores + t * E;
      double sum = 0, fs = 0;
      for (int64_t i = 0; i < E; ++i) {
        sum += s[i];
        fs += f[size_t(i)] * s[i];
      }
      const double mix = fs / sum, c = grad_scale / sum;
      for (int64_t i = 0; i < E; ++i) d[i] += float(c * (f[size_t(i)] - mix));
    }
  }
  return loss;
}

}  // namespace

float balance_loss(const float* scores, const int32_t* indices, int64_t B, int64_t T, int64_t E,
                   int64_t K, float alpha, float* dscores) {
  DSV3_CHECK(B >= 0 && T >= 0 && E > 0 && K > 0 && K <= E,
             "balance_loss: bad sizes B={} T={} E={} K={}", B, T, E, K);
  if (B == 0 || T == 0) return 0.0f;
  std::vector<double> per_seq(size_t(B), 0.0);
  const double grad_scale = double(alpha) / double(B * T);
  parallel_for(B, [&](int64_t b0, int64_t b1) {
    std::vector<double> f(static_cast<size_t>(E)), P(static_cast<size_t>(E));
    for (int64_t b = b0; b < b1; ++b) {
      per_seq[size_t(b)] =
          balance_sequence(scores + b * T * E, indices + b * T * K, T, E, K, grad_scale,
                           dscores ? dscores + b * T * E : nullptr, f, P);
    }
  });
  double total = 0;
  for (double x : per_seq) total += x;
  return float(double(alpha) * total / double(B));
}

}  // namespace dsv3::train
