// Load balancing (DeepSeek-V3 report §2.1.2): the sequence-wise balance loss and its gradient
// against a double-precision evaluation of eqs. 17-20 and central finite differences; the
// auxiliary-loss-free bias update on a skewed router (MaxVio must fall); MaxVio and load counts.
// Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/balance.hpp"

using namespace dsv3;
using namespace dsv3::train;

namespace {

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

// Indices [N, K] of the K largest entries of each row of v [N, E].
std::vector<int32_t> top_k(const std::vector<double>& v, int64_t N, int64_t E, int64_t K) {
  std::vector<int32_t> idx(static_cast<size_t>(N * K));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t a, int32_t b) {
      return v[size_t(t * E + a)] > v[size_t(t * E + b)];
    });
    std::copy(order.begin(), order.begin() + K, idx.begin() + t * K);
  }
  return idx;
}

// Eqs. 17-20 evaluated directly in double: mean over sequences of α·Σ_i f_i·P_i.
double balance_loss_ref(const std::vector<double>& s, const std::vector<int32_t>& idx, int64_t B,
                        int64_t T, int64_t E, int64_t K, double alpha) {
  double total = 0;
  for (int64_t b = 0; b < B; ++b) {
    double seq = 0;
    for (int64_t i = 0; i < E; ++i) {
      double count = 0, P = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = b * T + t;
        for (int64_t k = 0; k < K; ++k) count += idx[size_t(row * K + k)] == i ? 1 : 0;
        double sum = 0;
        for (int64_t j = 0; j < E; ++j) sum += s[size_t(row * E + j)];
        P += s[size_t(row * E + i)] / sum;
      }
      const double f = double(E) / double(K * T) * count;
      seq += f * P / double(T);
    }
    total += alpha * seq;
  }
  return total / double(B);
}

struct RouterCase {
  int64_t B, T, E, K;
  bool softmax;
};

void check_balance_loss(const RouterCase& c, uint64_t seed) {
  std::printf("balance_loss B=%lld T=%lld E=%lld K=%lld %s seed=%llu\n", (long long)c.B,
              (long long)c.T, (long long)c.E, (long long)c.K, c.softmax ? "softmax" : "sigmoid",
              (unsigned long long)seed);
  Rng rng(seed);
  const int64_t N = c.B * c.T;
  std::vector<double> s(static_cast<size_t>(N * c.E));
  for (auto& x : s) x = sigmoid(rng.normal() * 1.5 - 0.5);
  if (c.softmax) {
    for (int64_t t = 0; t < N; ++t) {
      double sum = 0;
      for (int64_t i = 0; i < c.E; ++i) sum += (s[size_t(t * c.E + i)] = std::exp(rng.normal()));
      for (int64_t i = 0; i < c.E; ++i) s[size_t(t * c.E + i)] /= sum;
    }
  }
  // Selection on biased scores, as the gate does: the bias moves selection only.
  std::vector<double> biased(s);
  for (auto& x : biased) x += 0.1 * rng.normal();
  const auto idx = top_k(biased, N, c.E, c.K);
  const double alpha = 0.37;

  std::vector<float> sf(s.begin(), s.end());
  std::vector<double> sd(sf.begin(), sf.end());  // the exact float inputs, widened
  std::vector<float> d(size_t(N * c.E), 0.5f);   // pre-filled: the gradient is ADDED
  const float loss =
      balance_loss(sf.data(), idx.data(), c.B, c.T, c.E, c.K, float(alpha), d.data());
  const double ref = balance_loss_ref(sd, idx, c.B, c.T, c.E, c.K, alpha);
  EXPECT_NEAR(loss, ref, 1e-6 * std::abs(ref)) << "loss";
  EXPECT_EQ(balance_loss(sf.data(), idx.data(), c.B, c.T, c.E, c.K, float(alpha), nullptr), loss);

  // Central differences of the double formula w.r.t. every score (f held: indices fixed).
  const double h = 1e-6;
  double max_g = 0, max_err = 0;
  for (size_t j = 0; j < sd.size(); ++j) {
    std::vector<double> p(sd);
    p[j] += h;
    const double lp = balance_loss_ref(p, idx, c.B, c.T, c.E, c.K, alpha);
    p[j] -= 2 * h;
    const double lm = balance_loss_ref(p, idx, c.B, c.T, c.E, c.K, alpha);
    const double fd = (lp - lm) / (2 * h);
    max_g = std::max(max_g, std::abs(fd));
    max_err = std::max(max_err, std::abs((double(d[j]) - 0.5) - fd));
  }
  std::printf("  loss %.9g ref %.9g, max |dL/ds| %.3g, max grad error %.3g\n", loss, ref, max_g,
              max_err);
  ASSERT_GT(max_g, 0);
  EXPECT_LT(max_err, 1e-4 * max_g);
}

}  // namespace

TEST(Balance, LossAndGradientMatchFormulaSigmoid) {
  check_balance_loss({3, 7, 9, 3, false}, 11);
}
TEST(Balance, LossAndGradientMatchFormulaSoftmax) {
  check_balance_loss({2, 5, 6, 2, true}, 12);
}
TEST(Balance, LossAndGradientMatchFormulaOneSequence) {
  check_balance_loss({1, 13, 8, 1, false}, 13);
}

TEST(Balance, LossOfUniformRoutingIsAlpha) {
  // Equal scores and a perfectly even selection: f_i = 1 and P_i = 1/E, so L = α exactly, and
  // the gradient vanishes (f_i equals Σ_i f_i·s'_i for every i).
  const int64_t B = 2, T = 4, E = 4, K = 2;
  std::vector<float> s(size_t(B * T * E), 0.3f);
  std::vector<int32_t> idx;
  for (int64_t n = 0; n < B * T; ++n) {
    idx.push_back(int32_t((2 * n) % E));
    idx.push_back(int32_t((2 * n + 1) % E));
  }
  std::vector<float> d(s.size(), 0.0f);
  EXPECT_NEAR(balance_loss(s.data(), idx.data(), B, T, E, K, 0.01f, d.data()), 0.01f, 1e-8);
  for (float g : d) EXPECT_NEAR(g, 0.0f, 1e-9);
}

TEST(Balance, RejectsExpertIndexOutOfRange) {
  std::vector<float> s(4, 0.5f);
  std::vector<int32_t> idx = {0, 4};
  EXPECT_THROW(balance_loss(s.data(), idx.data(), 1, 2, 2, 1, 0.1f, nullptr), Error);
  EXPECT_THROW(load_stats(idx.data(), 2, 1, 2), Error);
}

TEST(Balance, UpdateBiasSignsAndMaxVio) {
  const int64_t load[5] = {9, 1, 5, 5, 5};  // mean 5
  float bias[5] = {0.5f, 0.5f, 0.5f, -1.0f, 0.0f};
  update_bias(bias, load, 5, 0.25f);
  EXPECT_FLOAT_EQ(bias[0], 0.25f);  // overloaded: −γ
  EXPECT_FLOAT_EQ(bias[1], 0.75f);  // underloaded: +γ
  EXPECT_FLOAT_EQ(bias[2], 0.5f);   // at the mean: unchanged
  EXPECT_FLOAT_EQ(bias[3], -1.0f);
  EXPECT_FLOAT_EQ(bias[4], 0.0f);
  EXPECT_DOUBLE_EQ(max_vio(load, 5), 0.8);  // (9 − 5) / 5
  // A mean that is no integer: loads 2, 1, 1 (mean 4/3): expert 0 over, 1 and 2 under.
  const int64_t uneven[3] = {2, 1, 1};
  float b3[3] = {0, 0, 0};
  update_bias(b3, uneven, 3, 1.0f);
  EXPECT_EQ(b3[0], -1.0f);
  EXPECT_EQ(b3[1], 1.0f);
  EXPECT_EQ(b3[2], 1.0f);
  EXPECT_DOUBLE_EQ(max_vio(uneven, 3), 0.5);
  const int64_t none[3] = {0, 0, 0};
  EXPECT_EQ(max_vio(none, 3), 0.0);
}

TEST(Balance, LoadStatsCountsSelections) {
  const std::vector<int32_t> idx = {0, 2, 2, 3, 0, 2};  // N = 3 tokens, K = 2
  const LoadStats s = load_stats(idx.data(), 3, 2, 4);
  EXPECT_EQ(s.load, (std::vector<int64_t>{2, 0, 3, 1}));
  EXPECT_DOUBLE_EQ(s.max_vio, 1.0);  // mean 1.5, max 3
}

// A router with fixed random affinities skewed toward a few experts: sigmoid scores, top-K
// selection on scores + bias, and the bias update after every step. The load must approach
// balance.
TEST(Balance, BiasUpdateBalancesSkewedRouter) {
  const uint64_t seed = 2024;
  const int64_t N = 4096, E = 16, K = 4, steps = 400;
  const float gamma = 0.002f;
  std::printf("skewed router N=%lld E=%lld K=%lld gamma=%g steps=%lld seed=%llu\n", (long long)N,
              (long long)E, (long long)K, gamma, (long long)steps, (unsigned long long)seed);
  Rng rng(seed);
  std::vector<double> skew(size_t(E), 0.0);
  for (int64_t i = 0; i < 3; ++i) skew[size_t(i)] = 1.5;  // three hot experts
  std::vector<double> s(static_cast<size_t>(N * E));
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t i = 0; i < E; ++i) s[size_t(t * E + i)] = sigmoid(rng.normal() + skew[size_t(i)]);
  }
  std::vector<float> bias(size_t(E), 0.0f);
  std::vector<double> vio;
  std::vector<double> biased(s.size());
  for (int64_t step = 0; step < steps; ++step) {
    for (size_t j = 0; j < s.size(); ++j) biased[j] = s[j] + bias[j % size_t(E)];
    const auto idx = top_k(biased, N, E, K);
    const LoadStats st = load_stats(idx.data(), N, K, E);
    vio.push_back(st.max_vio);
    update_bias(bias.data(), st.load.data(), E, gamma);
  }
  double tail = 0;  // worst MaxVio over the last 50 steps
  for (int64_t step = steps - 50; step < steps; ++step) tail = std::max(tail, vio[size_t(step)]);
  std::printf("  MaxVio: step 0 %.3f, 50 %.3f, 100 %.3f, 200 %.3f, worst of last 50 %.3f\n", vio[0],
              vio[50], vio[100], vio[200], tail);
  EXPECT_GT(vio[0], 1.0);
  EXPECT_LT(tail, 0.2);
  // The hot experts ended with the lowest biases.
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 3; j < E; ++j) EXPECT_LT(bias[size_t(i)], bias[size_t(j)]);
  }
}
