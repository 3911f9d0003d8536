// Expert-parallel dispatch and combine against the same MoE computed locally: random routings
// (uneven token counts per rank), stand-in experts f_e(x) = (e + 1)·x + e on their owning ranks;
// forward outputs, input gradients and gate-weight gradients must match, and each token must
// travel once per owning rank, not once per expert. Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <set>

#include "comm_env.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "dist/expert_dispatch.hpp"

using namespace dsv3;

namespace {

float f(int64_t e, float x) {
  return float(e + 1) * x + float(e);
}

TEST(ExpertParallel, DispatchCombineForwardAndBackward) {
  dist::Comm& comm = *g_comm;
  const int P = comm.size(), me = comm.rank();
  const int64_t E = 8, K = 3, D = 5, N = 7 + me, per = E / P;
  const uint64_t seed = 500 + uint64_t(me);
  std::printf("[ep] rank %d seed %llu\n", me, (unsigned long long)seed);
  Rng r(seed);
  std::vector<int32_t> idx(size_t(N * K));
  std::vector<float> w(size_t(N * K)), x(size_t(N * D)), dout(size_t(N * D));
  int64_t expect_rows = 0;
  for (int64_t t = 0; t < N; ++t) {
    std::set<int32_t> chosen;
    while (int64_t(chosen.size()) < K) chosen.insert(int32_t(r.below(uint64_t(E))));
    std::set<int64_t> owners;
    int64_t k = 0;
    for (int32_t e : chosen) {
      idx[size_t(t * K + k)] = e;
      w[size_t(t * K + k)] = float(r.uniform());
      owners.insert(e / per);
      ++k;
    }
    expect_rows += int64_t(owners.size());
  }
  for (auto& v : x) v = float(r.normal());
  for (auto& v : dout) v = float(r.normal());

  dist::ExpertPlan plan;
  std::vector<float> xr;
  dist::expert_dispatch(comm, plan, xr, x.data(), idx.data(), w.data(), N, K, D, E);
  EXPECT_EQ(plan.sent_rows(), expect_rows);
  EXPECT_LE(plan.sent_rows(), N * K);
  // This rank's experts on the rows it received.
  std::vector<float> yr(size_t(plan.R * D), 0.0f);
  for (int64_t i = 0; i < plan.R; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t le = plan.recv_expert[size_t(i * K + k)];
      if (le < 0) continue;
      const int64_t e = me * per + le;
      for (int64_t j = 0; j < D; ++j)
        yr[size_t(i * D + j)] += plan.recv_weight[size_t(i * K + k)] * f(e, xr[size_t(i * D + j)]);
    }
  std::vector<float> out(size_t(N * D), 0.0f);
  dist::expert_combine(comm, plan, out.data(), yr.data());
  // Backward: the experts' input gradients and the gate-weight gradients on the owning ranks.
  std::vector<float> dyr;
  dist::expert_combine_backward(comm, plan, dyr, dout.data());
  std::vector<float> dxr(size_t(plan.R * D), 0.0f), dwr(size_t(plan.R * K), 0.0f);
  for (int64_t i = 0; i < plan.R; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t le = plan.recv_expert[size_t(i * K + k)];
      if (le < 0) continue;
      const int64_t e = me * per + le;
      const float g = plan.recv_weight[size_t(i * K + k)];
      double dot = 0;
      for (int64_t j = 0; j < D; ++j) {
        dxr[size_t(i * D + j)] += g * float(e + 1) * dyr[size_t(i * D + j)];
        dot += double(dyr[size_t(i * D + j)]) * f(e, xr[size_t(i * D + j)]);
      }
      dwr[size_t(i * K + k)] = float(dot);
    }
  std::vector<float> dx(size_t(N * D), 0.0f), dw(size_t(N * K), -1.0f);
  dist::expert_dispatch_backward(comm, plan, dx.data(), dw.data(), dxr.data(), dwr.data());

  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < D; ++j) {
      float want = 0, dwant = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[size_t(t * K + k)];
        want += w[size_t(t * K + k)] * f(e, x[size_t(t * D + j)]);
        dwant += w[size_t(t * K + k)] * float(e + 1) * dout[size_t(t * D + j)];
      }
      ASSERT_NEAR(out[size_t(t * D + j)], want, 1e-5f * (1 + std::fabs(want))) << t << "," << j;
      ASSERT_NEAR(dx[size_t(t * D + j)], dwant, 1e-5f * (1 + std::fabs(dwant))) << t << "," << j;
    }
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = idx[size_t(t * K + k)];
      double want = 0;
      for (int64_t j = 0; j < D; ++j)
        want += double(dout[size_t(t * D + j)]) * f(e, x[size_t(t * D + j)]);
      ASSERT_NEAR(dw[size_t(t * K + k)], want, 1e-5 * (1 + std::fabs(want))) << t << "," << k;
    }
}

TEST(ExpertParallel, ExpertsThatDoNotSplitAreRefused) {
  dist::Comm& comm = *g_comm;
  if (comm.size() == 1) GTEST_SKIP() << "any expert count splits over one rank";
  dist::ExpertPlan plan;
  std::vector<float> xr, x(4, 0.0f), w(1, 1.0f);
  std::vector<int32_t> idx(1, 0);
  EXPECT_THROW(dist::expert_dispatch(comm, plan, xr, x.data(), idx.data(), w.data(), 1, 1, 4,
                                     int64_t(comm.size()) * 2 + 1),
               Error);
}

}  // namespace
