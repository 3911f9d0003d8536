// Bucketed, overlapped gradient reduce-scatter for ZeRO-1; see grad_sync.hpp.
#include "dist/grad_sync.hpp"

#include <algorithm>
#include <cmath>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::dist {

namespace {
// Σ x² in double over x[0, n), in fixed blocks (the same result at any thread count).
double sq_sum(const float* x, int64_t n) {
  constexpr int64_t kBlock = 1 << 14;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(std::max<int64_t>(blocks, 0)), 0.0);
  parallel_for(blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double s = 0;
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
        s += double(x[i]) * double(x[i]);
      part[size_t(b)] = s;
    }
  });
  double t = 0;
  for (double s : part) t += s;
  return t;
}
}  // namespace

GradSync::GradSync(Comm& dp, float* grads, int64_t n)
    : dp_(dp.split(0, dp.rank())), grads_(grads), n_(n) {
  DSV3_CHECK(n >= 0, "GradSync: {} gradient elements", n);
  const int P = dp_->size(), me = dp_->rank();
  block_ = (n + P - 1) / P;
  begin_ = std::min(n, block_ * me);
  end_ = std::min(n, block_ * (me + 1));
  if (P > 1) {
    shard_buf_.assign(size_t(block_), 0.0f);
    shard_ptr_ = shard_buf_.data();
  } else {
    shard_ptr_ = grads_;
  }
}

GradSync::~GradSync() = default;

void GradSync::set_outer(Comm& outer, Ranges local) {
  std::sort(local.begin(), local.end());
  for (size_t i = 0; i < local.size(); ++i) {
    const auto [b, e] = local[i];
    DSV3_CHECK(0 <= b && b <= e && e <= n_, "GradSync: local range [{}, {}) outside [0, {})", b, e,
               n_);
    DSV3_CHECK(i == 0 || local[i - 1].second <= b,
               "GradSync: local range [{}, {}) overlaps another", b, e);
  }
  outer_ = outer.split(0, outer.rank());
  local_ = std::move(local);
}

void GradSync::begin_step() {
  DSV3_ASSERT(buckets_.empty() && outer_reqs_.empty(),
              "GradSync: a step began before the last one finished");
  started_.clear();
  pending_ = {0, 0};
  next_outer_ = 0;
  requests_ = 0;
  in_backward_s_ = 0;
}

void GradSync::start(int64_t b, int64_t e) {
  if (b >= e) return;
  Bucket k{b, e, nullptr};
  const int P = dp_->size();
  if (P > 1) {
    std::vector<int64_t> counts(static_cast<size_t>(P));
    for (int r = 0; r < P; ++r) {
      const int64_t lo = std::max(b, std::min(n_, block_ * r));
      const int64_t hi = std::min(e, std::min(n_, block_ * (r + 1)));
      counts[size_t(r)] = std::max<int64_t>(0, hi - lo);
    }
    float* recv = shard_ptr_ + std::clamp(b - begin_, int64_t(0), block_);
    k.scatter = dp_->ireduce_scatter_v(grads_ + b, recv, counts.data(), DType::F32, ReduceOp::Sum);
    ++requests_;
  }
  buckets_.push_back(std::move(k));
}

void GradSync::flush() {
  start(pending_.first, pending_.second);
  pending_ = {0, 0};
}

void GradSync::start_outer(Bucket& k) {
  k.outer_started = true;
  if (!outer_ || outer_->size() == 1) return;
  // The bucket's part of this rank's shard, less the local (expert) ranges.
  const int64_t lo = std::max(k.b, begin_), hi = std::min(k.e, end_);
  auto reduce = [&](int64_t b, int64_t e) {
    if (b >= e) return;
    outer_reqs_.push_back(
        outer_->iall_reduce(shard_ptr_ + (b - begin_), e - b, DType::F32, ReduceOp::Sum));
    ++requests_;
  };
  int64_t at = lo;
  for (const auto& [b, e] : local_) {
    if (e <= at || b >= hi) continue;
    reduce(at, std::max(at, b));
    at = std::min(hi, e);
  }
  reduce(at, hi);
}

void GradSync::drive(bool all) {
  for (auto& k : buckets_)
    if (k.scatter) k.scatter->test();
  // Outer all-reduces start in bucket order on every rank (collectives must start in the same
  // order everywhere), each once its bucket's reduce-scatter is complete.
  while (next_outer_ < buckets_.size()) {
    Bucket& k = buckets_[next_outer_];
    if (k.scatter && !k.scatter->test()) {
      if (!all) break;
      k.scatter->wait();
    }
    start_outer(k);
    ++next_outer_;
  }
  for (auto& r : outer_reqs_) r->test();
}

void GradSync::ready(int64_t begin, int64_t end) {
  const auto t0 = Clock::now();
  DSV3_CHECK(0 <= begin && begin <= end && end <= n_, "GradSync: range [{}, {}) outside [0, {})",
             begin, end, n_);
  if (begin == end) return;
  for (const auto& [b, e] : started_)
    DSV3_CHECK(end <= b || e <= begin, "GradSync: range [{}, {}) reported twice", begin, end);
  started_.emplace_back(begin, end);
  auto& [pb, pe] = pending_;
  if (pb < pe && end != pb && begin != pe) flush();
  if (pb < pe) {
    pb = std::min(pb, begin);
    pe = std::max(pe, end);
  } else {
    pending_ = {begin, end};
  }
  if (pe - pb >= bucket_elems_) flush();
  drive(false);
  in_backward_s_ += seconds_since(t0);
}

double GradSync::finish() {
  const auto t0 = Clock::now();
  flush();
  // The gaps between the reported ranges.
  std::sort(started_.begin(), started_.end());
  int64_t at = 0;
  for (const auto& [b, e] : started_) {
    start(at, b);
    at = e;
  }
  start(at, n_);
  drive(true);
  for (auto& r : outer_reqs_) r->wait();
  outer_reqs_.clear();
  buckets_.clear();
  const int ranks = dp_->size() * (outer_ ? outer_->size() : 1);
  const float inv = 1.0f / float(ranks);
  if (ranks > 1)
    parallel_for(end_ - begin_, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) shard_ptr_[i] *= inv;
    });
  return seconds_since(t0);
}

float GradSync::clip(float max_norm) {
  // {replicated, local} sums of squares of this rank's shard.
  double sq[2] = {0, 0};
  auto add = [&](int64_t b, int64_t e, int which) {
    if (b < e) sq[which] += sq_sum(shard_ptr_ + (b - begin_), e - b);
  };
  int64_t at = begin_;
  for (const auto& [b, e] : local_) {
    if (e <= at || b >= end_) continue;
    add(at, std::max(at, b), 0);
    add(std::max(at, b), std::min(end_, e), 1);
    at = std::min(end_, e);
  }
  add(at, end_, 0);
  dp_->all_reduce(sq, 2, DType::F64, ReduceOp::Sum);
  if (outer_ && outer_->size() > 1) {
    // The replicated elements are the same on every outer rank: counted once.
    outer_->all_reduce(sq, 2, DType::F64, ReduceOp::Sum);
    sq[0] /= double(outer_->size());
  }
  const double norm = std::sqrt(sq[0] + sq[1]);
  if (std::isfinite(norm) && norm > double(max_norm)) {
    const float scale = float(double(max_norm) / norm);
    parallel_for(end_ - begin_, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) shard_ptr_[i] *= scale;
    });
  }
  return float(norm);
}

}  // namespace dsv3::dist
