// Bucketed, overlapped gradient all-reduce; see grad_sync.hpp.
#include "dist/grad_sync.hpp"

#include <algorithm>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::dist {

GradSync::GradSync(Comm& comm, float* grads, int64_t n) : comm_(comm), grads_(grads), n_(n) {}

void GradSync::add_group(int64_t begin, int64_t end, Comm& group) {
  DSV3_CHECK(0 <= begin && begin <= end && end <= n_, "GradSync: group [{}, {}) outside [0, {})",
             begin, end, n_);
  if (begin == end) return;
  for (const auto& g : groups_)
    DSV3_CHECK(end <= g.begin || g.end <= begin, "GradSync: group [{}, {}) overlaps another", begin,
               end);
  groups_.push_back({begin, end, &group});
  std::sort(groups_.begin(), groups_.end(),
            [](const Group& a, const Group& b) { return a.begin < b.begin; });
}

void GradSync::start(int64_t begin, int64_t end) {
  auto reduce = [&](Comm& c, int64_t b, int64_t e) {
    if (b < e) inflight_.push_back(c.iall_reduce(grads_ + b, e - b, DType::F32, ReduceOp::Sum));
  };
  int64_t at = begin;
  for (const auto& g : groups_) {
    if (g.end <= at || g.begin >= end) continue;
    reduce(comm_, at, std::max(at, g.begin));
    at = std::max(at, g.begin);
    const int64_t e = std::min(end, g.end);
    if (g.comm->size() > 1) reduce(*g.comm, at, e);
    at = e;
  }
  reduce(comm_, at, end);
}

void GradSync::begin_step() {
  DSV3_ASSERT(inflight_.empty(), "GradSync: a step began before the last one finished");
  started_.clear();
}

void GradSync::ready(int64_t begin, int64_t end) {
  DSV3_CHECK(0 <= begin && begin <= end && end <= n_, "GradSync: range [{}, {}) outside [0, {})",
             begin, end, n_);
  if (begin == end) return;
  for (const auto& [b, e] : started_)
    DSV3_CHECK(end <= b || e <= begin, "GradSync: range [{}, {}) reported twice", begin, end);
  started_.emplace_back(begin, end);
  start(begin, end);
  // Drive progress of what is already in flight (MPI progresses on calls into it).
  for (auto& r : inflight_) r->test();
}

double GradSync::finish() {
  const auto t0 = Clock::now();
  // The gaps between the reported ranges.
  std::sort(started_.begin(), started_.end());
  int64_t at = 0;
  std::vector<std::pair<int64_t, int64_t>> rest;
  for (const auto& [b, e] : started_) {
    if (b > at) rest.emplace_back(at, b);
    at = e;
  }
  if (at < n_) rest.emplace_back(at, n_);
  for (const auto& [b, e] : rest) start(b, e);
  for (auto& r : inflight_) r->wait();
  inflight_.clear();
  const float inv = 1.0f / float(comm_.size());
  if (comm_.size() > 1)
    parallel_for(n_, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) grads_[i] *= inv;
    });
  return seconds_since(t0);
}

}  // namespace dsv3::dist
