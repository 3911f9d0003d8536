// Spin team with more threads asked for than there are cores (issue 12: `generate --threads 1000`
// took minutes for two tokens): the team is capped at the cores, and a hand-made team larger
// than the cores still finishes its jobs because waiting threads yield.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>

#include "core/parallel.hpp"

namespace {

TEST(SpinTeamOversubscribed, TeamIsCappedAtTheCores) {
  const int procs = omp_get_num_procs(), saved = omp_get_max_threads();
  omp_set_num_threads(procs * 4);
  int team_threads = 0;
  std::atomic<int64_t> covered{0};
  dsv3::spin_team([&] {
    team_threads = dsv3::region_threads();
    for (int r = 0; r < 200; ++r)
      dsv3::parallel_for(64, [&](int64_t b, int64_t e) { covered += e - b; });
  });
  omp_set_num_threads(saved);
  EXPECT_LE(team_threads, procs) << "cores " << procs;
  EXPECT_EQ(covered.load(), 200 * 64);
}

TEST(SpinTeamOversubscribed, LargerTeamThanCoresCompletes) {
  // Built by hand, as spin_team no longer makes one: 4 threads per core, each job run on all.
  const int threads = omp_get_num_procs() * 4, jobs = 300;
  dsv3::detail::SpinTeam team;
  std::atomic<int64_t> runs{0};
  auto job = [&](int) { runs.fetch_add(1, std::memory_order_relaxed); };
#pragma omp parallel num_threads(threads)
  {
    if (omp_get_thread_num() == 0) {
      team.set_threads(omp_get_num_threads());
      for (int j = 0; j < jobs; ++j) team.run(job);
      team.stop();
    } else {
      team.serve(omp_get_thread_num());
    }
  }
  EXPECT_EQ(runs.load(), int64_t(jobs) * threads);
}

}  // namespace
