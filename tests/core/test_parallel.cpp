// Threading helpers (core/parallel.hpp): parallel_for and parallel_jobs cover their ranges exactly
// once with and without a spin team, jobs nested in a team job run inline, a team survives
// thousands of short regions, and an exception thrown inside spin_team reaches its caller.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "core/parallel.hpp"

using namespace dsv3;

namespace {

// Every index of [0, n) written by exactly one call, and by which thread.
void expect_covers_once(int64_t n, int64_t min_chunk) {
  std::vector<std::atomic<int>> hits(size_t(n + 1));
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        ASSERT_LE(0, b);
        ASSERT_LT(b, e);
        ASSERT_LE(e, n);
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      },
      min_chunk);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "index " << i;
}

class Parallel : public ::testing::Test {
 protected:
  void SetUp() override { set_num_threads(2); }
};

TEST_F(Parallel, ForCoversEachIndexOnceInsideAndOutsideASpinTeam) {
  for (int64_t n : {0, 1, 2, 3, 17, 1000}) {
    expect_covers_once(n, 1);
    expect_covers_once(n, 8);
  }
  int regions_with_two_threads = 0;
  spin_team([&] {
    EXPECT_EQ(region_threads(), num_threads());
    for (int64_t n : {0, 1, 2, 3, 17, 1000}) {
      expect_covers_once(n, 1);
      expect_covers_once(n, 8);
    }
    // Thousands of back-to-back short regions (a decode step has ~80 per token).
    std::atomic<int64_t> sum{0};
    for (int r = 0; r < 5000; ++r) {
      std::atomic<int> threads_seen{0};
      parallel_for(2, [&](int64_t b, int64_t e) {
        threads_seen++;
        for (int64_t i = b; i < e; ++i) sum += i + 1;
      });
      regions_with_two_threads += threads_seen.load() == 2;
    }
    EXPECT_EQ(sum.load(), 5000 * 3);
    // Two threads claiming the middle of a range from both ends, many times over.
    for (int r = 0; r < 300; ++r)
      for (int64_t n : {8, 9, 33, 64, 1000}) expect_covers_once(n, 1);
  });
  if (num_threads() >= 2) {
    EXPECT_EQ(regions_with_two_threads, 5000);
  }
}

TEST_F(Parallel, NestedRegionsRunInline) {
  spin_team([&] {
    parallel_for(2, [&](int64_t, int64_t) {
      EXPECT_EQ(region_threads(), 1);
      expect_covers_once(100, 1);
    });
  });
}

TEST_F(Parallel, JobsRunOnceEachOnAThreadOfTheRegion) {
  for (bool team : {false, true}) {
    auto body = [&] {
      const int nt = region_threads();
      for (int64_t n : {0, 1, 2, 7, 100}) {
        std::vector<std::atomic<int>> runs(size_t(n + 1));
        std::atomic<int> bad_thread{0};
        parallel_jobs(n, [&](int64_t j, int thread) {
          runs[size_t(j)]++;
          if (thread < 0 || thread >= nt) bad_thread++;
        });
        for (int64_t j = 0; j < n; ++j) EXPECT_EQ(runs[size_t(j)].load(), 1) << "job " << j;
        EXPECT_EQ(bad_thread.load(), 0);
      }
    };
    if (team)
      spin_team(body);
    else
      body();
  }
}

TEST_F(Parallel, AJobThrowingOnTheCallingThreadWaitsForTheOthers) {
  // The other thread is still inside the job (it reads the caller's frame) when the calling
  // thread's part throws: the exception must wait for it, and the team must stay usable.
  std::atomic<int> finished{0};
  spin_team([&] {
    for (int r = 0; r < 50; ++r) {
      try {
        parallel_for(2, [&](int64_t b, int64_t) {
          if (b == 0) throw std::runtime_error("from a job");
          volatile double x = 0;
          for (int i = 0; i < 20000; ++i) x = x + 1e-3;
          finished++;
        });
        ADD_FAILURE() << "no exception";
      } catch (const std::runtime_error&) {
      }
    }
    EXPECT_EQ(region_threads(), num_threads());  // not left busy
    expect_covers_once(1000, 1);
  });
  if (num_threads() >= 2) {
    EXPECT_EQ(finished.load(), 50);  // every other-thread part ran to its end
  }
}

TEST_F(Parallel, SpinTeamPassesExceptionsOnAndCanRunAgain) {
  EXPECT_THROW(spin_team([] {
                 parallel_for(4, [](int64_t, int64_t) {});
                 throw std::runtime_error("from the body");
               }),
               std::runtime_error);
  int ran = 0;
  spin_team([&] {
    expect_covers_once(64, 1);
    ++ran;
  });
  EXPECT_EQ(ran, 1);
}

}  // namespace
