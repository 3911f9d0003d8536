// GradSync (dist/grad_sync.hpp) on every layout of the job: a data-parallel group of D ranks times
// an outer (expert-parallel) group of O ranks, D·O = the job's size. Each rank's gradient is
// small integers (sums and the divisions by D·O, a power of two, are exact), with "local" ranges
// (this outer rank's experts) that only the data-parallel group sums. Ranges are reported out of
// order and with gaps (finish() reduces those), merged into buckets; every rank's shard must equal
// the mean computed here for the one-process model, exactly, and the clipping norm must count
// every element of that model once.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "comm_env.hpp"
#include "core/error.hpp"
#include "dist/grad_sync.hpp"

using namespace dsv3;
using namespace dsv3::dist;

namespace {

// Gradient element i on data-parallel rank d of outer rank o.
float grad(int d, int o, int64_t i) {
  return float((d * 7 + o * 3 + 1) * (i % 13 + 1) - 40);
}

TEST(GradSync, ReduceScatterIntoShardsOnEveryLayout) {
  Comm& world = *g_comm;
  const int P = world.size(), me = world.rank();
  const int64_t n = 1001;
  const GradSync::Ranges local = {{100, 250}, {600, 700}};
  auto is_local = [&](int64_t i) { return (i >= 100 && i < 250) || (i >= 600 && i < 700); };
  for (int O = 1; O <= P; O *= 2) {
    for (int64_t bucket : {int64_t(0), int64_t(250)}) {
      SCOPED_TRACE(testing::Message() << "outer " << O << ", bucket " << bucket);
      const int D = P / O, d = me / O, o = me % O;
      auto outer = world.split(d, o);
      auto dp = world.split(o, d);
      std::vector<float> g(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) g[size_t(i)] = grad(d, o, i);
      GradSync sync(*dp, g.data(), n);
      if (O > 1) sync.set_outer(*outer, local);
      sync.set_bucket_elems(bucket);
      for (int step = 0; step < 2; ++step) {  // twice: the state resets between steps
        for (int64_t i = 0; i < n; ++i) g[size_t(i)] = grad(d, o, i);
        sync.begin_step();
        sync.ready(700, 900);
        sync.ready(400, 700);  // contiguous with the last: merged when the bucket allows
        sync.ready(250, 400);
        sync.ready(100, 250);
        EXPECT_THROW(sync.ready(150, 160), Error);  // reported twice
        sync.finish();
        const int64_t block = (n + D - 1) / D;
        ASSERT_EQ(sync.shard_begin(), std::min(n, block * d));
        ASSERT_EQ(sync.shard_end(), std::min(n, block * (d + 1)));
        for (int64_t i = sync.shard_begin(); i < sync.shard_end(); ++i) {
          float want = 0;
          for (int dd = 0; dd < D; ++dd)
            for (int oo = 0; oo < O; ++oo)
              if (!is_local(i) || oo == o) want += grad(dd, oo, i);
          want /= float(P);
          ASSERT_EQ(sync.shard()[i - sync.shard_begin()], want) << "element " << i;
        }
      }
      EXPECT_GE(sync.requests_last_step(), D > 1 ? 1 : 0);
      // The norm of the one-process model: replicated elements once, every outer rank's local
      // elements once.
      double sq = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int oo = 0; oo < (is_local(i) ? O : 1); ++oo) {
          double m = 0;
          for (int dd = 0; dd < D; ++dd)
            for (int o2 = 0; o2 < O; ++o2)
              if (!is_local(i) || o2 == oo) m += grad(dd, o2, i);
          m /= P;
          sq += m * m;
        }
      const float before = sync.shard_end() > sync.shard_begin() ? sync.shard()[0] : 0.0f;
      const float norm = sync.clip(float(std::sqrt(sq) / 4));
      EXPECT_NEAR(norm, std::sqrt(sq), 1e-6 * std::sqrt(sq));
      if (sync.shard_end() > sync.shard_begin()) {
        EXPECT_NEAR(sync.shard()[0], before / 4, 1e-6 * std::fabs(before));
      }
      world.barrier();
    }
  }
}

TEST(GradSync, BadRangesAreErrors) {
  Comm& c = *g_comm;
  std::vector<float> g(64);
  GradSync sync(c, g.data(), 64);
  sync.begin_step();
  EXPECT_THROW(sync.ready(10, 65), Error);
  EXPECT_THROW(sync.ready(-1, 3), Error);
  sync.finish();
  GradSync::Ranges bad = {{0, 10}, {5, 20}};
  EXPECT_THROW(sync.set_outer(c, bad), Error);
}

}  // namespace
