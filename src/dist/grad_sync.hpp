// Data-parallel gradient reduction for ZeRO-1 (DeepSeek-V3 report §3.2: data parallelism with the
// optimizer state sharded): the FP32 gradient arena is reduce-scattered over the data-parallel
// ranks in buckets while the backward is still running, so that each rank ends with the reduced
// gradient of its own shard of the arena only — the part its optimizer updates.
//
// Shards: the arena's n elements in blocks of ceil(n / P) (P = the data-parallel group's size);
// rank r owns [r·block, min(n, (r+1)·block)), as train::ShardedAdamW. A bucket [b, e) is reduced
// with one non-blocking reduce-scatter of uneven blocks (each rank receives its shard's part of
// the bucket, often nothing), started as soon as the training step reports the range final
// (model::TrainOptions::grads_ready: a layer's gradients right after its backward). Consecutive
// ranges are coalesced up to a bucket size; every report also drives the requests in flight
// (MPI progresses only inside MPI calls). finish() reduces what was never reported (embedding,
// final norm, head), waits, and divides by the number of ranks that contributed.
//
// Expert parallelism: with set_outer(), the elements outside the `local` ranges (everything but
// this rank's routed experts) are held by the ranks of another group too (the EP group, whose
// ranks share a data-parallel index). Their shard is then also summed over that group: one
// non-blocking all-reduce per bucket, started (in bucket order, the same on every rank) once the
// bucket's reduce-scatter is complete. With a one-rank data-parallel group the shard is the whole
// arena, no reduce-scatter runs and the buckets go straight to that all-reduce, in place.
//
// The communicators are duplicated at construction (collective): requests started while the
// backward runs its own collectives (the expert all-to-all) never meet those.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "dist/comm.hpp"

namespace dsv3::dist {

class GradSync {
 public:
  using Ranges = std::vector<std::pair<int64_t, int64_t>>;

  // grads: the FP32 gradient arena of n elements (kept by pointer); dp: the group the gradient is
  // sharded over. Collective over dp.
  GradSync(Comm& dp, float* grads, int64_t n);
  ~GradSync();

  // The elements outside `local` (sorted, disjoint) are summed over `outer` as well; finish()
  // divides everything by dp.size() · outer.size(). Collective over outer.
  void set_outer(Comm& outer, Ranges local);
  // Reported ranges are merged while contiguous until they hold this many elements (0: each
  // report is one bucket).
  void set_bucket_elems(int64_t n) { bucket_elems_ = n; }

  void begin_step();                       // forget last step's ranges
  void ready(int64_t begin, int64_t end);  // [begin, end) is final: start reducing it
  // Reduces the rest, waits, averages. Returns the seconds spent waiting here (communication
  // that the backward did not hide).
  double finish();

  // The reduced, averaged gradient of [shard_begin(), shard_end()) after finish() (the arena
  // itself when the data-parallel group has one rank).
  float* shard() { return shard_ptr_; }
  int64_t shard_begin() const { return begin_; }
  int64_t shard_end() const { return end_; }

  // The global gradient norm from the shards (every element of the model once: an all-reduce of
  // the shards' sums of squares; the replicated elements counted once, not once per outer rank),
  // and the shard scaled to at most max_norm. Collective; after finish().
  float clip(float max_norm);

  // Per step: gradient bytes this rank puts into reductions, reductions started, and seconds
  // spent in ready() (starting requests and driving them during the backward).
  int64_t bytes_per_step() const { return n_ * int64_t(sizeof(float)); }
  int requests_last_step() const { return requests_; }
  double in_backward_s() const { return in_backward_s_; }

 private:
  struct Bucket {
    int64_t b, e;  // arena range
    RequestPtr scatter;
    bool outer_started = false;
  };
  void start(int64_t b, int64_t e);
  void flush();          // start the pending merged range
  void drive(bool all);  // test requests; start outer all-reduces of completed buckets in order
  void start_outer(Bucket& k);
  std::unique_ptr<Comm> dp_, outer_;
  float* grads_;
  int64_t n_, block_, begin_, end_;
  std::vector<float> shard_buf_;
  float* shard_ptr_;
  Ranges local_;
  int64_t bucket_elems_ = 0;
  std::pair<int64_t, int64_t> pending_{0, 0};
  Ranges started_;
  std::vector<Bucket> buckets_;
  size_t next_outer_ = 0;
  std::vector<RequestPtr> outer_reqs_;
  int requests_ = 0;
  double in_backward_s_ = 0;
};

}  // namespace dsv3::dist
