// Threading: one OpenMP pool shared with oneDNN. parallel_for splits [0, n) into contiguous
// chunks, one per thread, so each thread touches one range of memory (on a spin team of two, a
// few more ranges so that the faster thread takes more).
//
// A run of many short parallel regions (a decode step: ~80 regions of 10-50 µs per token) can go
// through a SpinTeam instead: one OpenMP region for the whole run, whose other threads spin on a
// generation counter and run each posted job. A GOMP fork/join measured 3.2-3.7 µs here (an
// empty `omp parallel for` on 2 threads) against 0.5 µs for a flag round trip between the cores.
// A team never has more threads than cores, and a wait that lasts yields the core: with more
// spinning threads than cores each job waits for the scheduler to run every thread in turn
// (`generate --threads 1000` took minutes for two tokens).
#pragma once
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>

namespace dsv3 {

namespace detail {

// Busy-waits until ready(); after ~4096 pauses (tens of µs, longer than any decode region) it
// yields the core on every retry, so that waiting threads cannot starve the ones they wait for.
template <typename Ready>
inline void spin_until(Ready&& ready) {
  for (int spins = 0; !ready(); ++spins) {
    if (spins < 4096)
      _mm_pause();
    else
      std::this_thread::yield();
  }
}

// The threads of one spin_team call. Only its master (the thread that called spin_team) posts
// jobs; a job is fn(thread) on every thread of the team, the master included.
class SpinTeam {
 public:
  int threads() const { return threads_; }
  bool busy() const { return busy_; }

  // An exception from fn(0) is rethrown once the other threads are done with fn: they hold
  // references into the caller's frame. (One on another thread ends the program, as it would
  // inside an OpenMP region.)
  template <typename Fn>
  void run(Fn& fn) {
    busy_ = true;
    call_ = [](void* f, int t) { (*static_cast<Fn*>(f))(t); };
    ctx_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_release);  // publishes call_, ctx_ and done_
    std::exception_ptr error;
    try {
      fn(0);
    } catch (...) {
      error = std::current_exception();
    }
    spin_until([&] { return done_.load(std::memory_order_acquire) == threads_ - 1; });
    busy_ = false;
    if (error) std::rethrow_exception(error);
  }

  // The loop of every thread but the master, until stop().
  void serve(int thread) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g;
      spin_until([&] { return (g = gen_.load(std::memory_order_acquire)) != seen; });
      seen = g;
      if (!call_) return;
      call_(ctx_, thread);
      done_.fetch_add(1, std::memory_order_release);
    }
  }
  void stop() {
    call_ = nullptr;
    gen_.fetch_add(1, std::memory_order_release);
  }
  void set_threads(int n) { threads_ = n; }

 private:
  alignas(64) std::atomic<uint64_t> gen_{0};
  alignas(64) std::atomic<int> done_{0};
  void (*call_)(void*, int) = nullptr;
  void* ctx_ = nullptr;
  int threads_ = 1;
  bool busy_ = false;
};

// The team whose master is this thread, while spin_team runs.
inline SpinTeam*& current_team() {
  thread_local SpinTeam* team = nullptr;
  return team;
}

// The team to post a region to from here: none inside one of its jobs.
inline SpinTeam* idle_team() {
  SpinTeam* t = current_team();
  return t && !t->busy() ? t : nullptr;
}

}  // namespace detail

inline int num_threads() {
  return omp_get_max_threads();
}
inline void set_num_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

// Threads a parallel region started here would get: the spin team's, 1 inside another
// parallel region, else the pool's.
inline int region_threads() {
  if (detail::SpinTeam* t = detail::idle_team()) return t->threads();
  return omp_in_parallel() ? 1 : omp_get_max_threads();
}

// Runs body() on this thread with the pool's other threads spinning beside it, so that the
// parallel_for and parallel_jobs calls inside it cost a flag round trip instead of an OpenMP
// fork/join. Only for runs of short regions that call nothing with its own OpenMP regions (those
// would run on one thread): decode steps. Exceptions thrown on this thread (by body() or by the
// part of a job it runs) propagate; one thrown on another thread ends the program, as inside
// any OpenMP region.
template <typename Body>
void spin_team(Body&& body) {
  if (region_threads() <= 1 || detail::current_team()) {
    body();
    return;
  }
  detail::SpinTeam team;
  std::exception_ptr error;
#pragma omp parallel num_threads(std::min(omp_get_max_threads(), omp_get_num_procs()))
  {
    const int thread = omp_get_thread_num();
    if (thread == 0) {
      team.set_threads(omp_get_num_threads());
      detail::current_team() = &team;
      try {
        body();
      } catch (...) {
        error = std::current_exception();
      }
      detail::current_team() = nullptr;
      team.stop();
    } else {
      team.serve(thread);
    }
  }
  if (error) std::rethrow_exception(error);
}

// fn(begin, end) is called on disjoint ranges covering [0, n), possibly several per thread.
// Runs inline when n is small or when already inside a parallel region (or a spin team's job).
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t min_chunk = 1) {
  const int nt = region_threads();
  const int64_t chunks =
      std::min<int64_t>(nt, (n + min_chunk - 1) / std::max<int64_t>(min_chunk, 1));
  if (chunks <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
  if (detail::SpinTeam* team = detail::idle_team()) {
    if (chunks == 2 && n >= 8) {
      // Two threads meet where they meet: each takes a fixed 3/8 of the range from its own end
      // (thread 0 from the front, thread 1 from the back), then the middle in pieces of n/32
      // claimed through one counter, so whichever runs faster does more. Equal halves left the
      // faster thread idle 6.6 µs of a 38.7 µs GEMV region on average (the two threads' speeds
      // differ at random from region to region); paired A/B of decode: 1.033, 1.011, 1.001.
      alignas(64) std::atomic<int64_t> claimed{0};
      const int64_t first = n * 3 / 8, piece = std::max<int64_t>(1, n / 32);
      auto job = [&](int c) {
        if (c >= 2) return;
        int64_t taken = 0, k = first;
        for (;;) {
          const int64_t before = claimed.fetch_add(k, std::memory_order_relaxed);
          if (before >= n) break;
          k = std::min(k, n - before);
          const int64_t b = c == 0 ? taken : n - taken - k;  // the two ends never cross
          fn(b, b + k);
          taken += k;
          k = piece;
        }
      };
      team->run(job);
      return;
    }
    auto job = [&](int c) {
      const int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
      if (c < chunks && b < e) fn(b, e);
    };
    team->run(job);
    return;
  }
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  }
}

// As parallel_for, but [0, n) is cut into up to kBalancedPieces pieces per thread (of at least
// min_chunk) at fixed boundaries, claimed one at a time by whichever thread is free: for regions
// of equal work per element on the host's two vCPUs, whose speeds differ at random from region to
// region (equal halves left the master waiting at the join for 13% of a BF16 training step,
// perf, 2026-12-08). The pieces do not depend on the threads' speeds, only which thread runs
// which; fn must not assume one call per thread.
inline constexpr int64_t kBalancedPieces = 4;
template <typename Fn>
void parallel_for_balanced(int64_t n, Fn&& fn, int64_t min_chunk = 1) {
  const int nt = region_threads();
  if (nt <= 1 || detail::idle_team()) {
    parallel_for(n, fn, min_chunk);
    return;
  }
  const int64_t pieces = std::min<int64_t>(nt * kBalancedPieces,
                                           (n + min_chunk - 1) / std::max<int64_t>(min_chunk, 1));
  if (pieces <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
#pragma omp parallel for num_threads(int(std::min <int64_t>(nt, pieces))) schedule(dynamic, 1)
  for (int64_t c = 0; c < pieces; ++c) {
    const int64_t b = n * c / pieces, e = n * (c + 1) / pieces;
    if (b < e) fn(b, e);
  }
}

// fn(job, thread) for every job in [0, n), handed out one at a time, in order, to whichever
// thread is free (for jobs of uneven size); thread < region_threads().
template <typename Fn>
void parallel_jobs(int64_t n, Fn&& fn) {
  const int nt = int(std::min<int64_t>(region_threads(), n));
  if (nt <= 1) {
    for (int64_t j = 0; j < n; ++j) fn(j, 0);
    return;
  }
  if (detail::SpinTeam* team = detail::idle_team()) {
    alignas(64) std::atomic<int64_t> next{0};
    auto job = [&](int t) {
      for (int64_t j; (j = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(j, t);
    };
    team->run(job);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t j = 0; j < n; ++j) fn(j, omp_get_thread_num());
}

}  // namespace dsv3
