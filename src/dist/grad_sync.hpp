// Data-parallel gradient synchronization (DeepSeek-V3 report §3.2: data parallelism with the
// optimizer state sharded as ZeRO-1): the gradient arena is reduced across the data-parallel
// ranks in buckets while the backward is still running. Each range the training step reports
// final (model::TrainOptions::grads_ready: a layer's gradients right after its backward) is
// started as a non-blocking all-reduce at once; finish() reduces what is left (embedding, final
// norm, head), waits for everything and divides by the number of ranks, so every rank holds the
// gradient of the mean loss over the global batch.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "dist/comm.hpp"

namespace dsv3::dist {

class GradSync {
 public:
  // grads: the FP32 gradient arena of n elements (kept by pointer).
  GradSync(Comm& comm, float* grads, int64_t n);

  // Elements [begin, end) are reduced over `group` instead of the main communicator (expert
  // parallelism: a rank's routed experts, over the data-parallel group of the ranks holding the
  // same experts; the other ranks add nothing to them). finish() still divides them by the main
  // communicator's size: every rank's loss is the mean over its share of the global batch.
  void add_group(int64_t begin, int64_t end, Comm& group);

  void begin_step();                       // forget last step's ranges
  void ready(int64_t begin, int64_t end);  // [begin, end) is final: start reducing it
  // Reduces the rest, waits, averages. Returns the seconds spent waiting here (communication
  // that the backward did not hide).
  double finish();

  int64_t bytes_per_step() const { return n_ * int64_t(sizeof(float)); }

 private:
  Comm& comm_;
  float* grads_;
  int64_t n_;
  void start(int64_t begin, int64_t end);  // one all-reduce per piece, on its communicator
  struct Group {
    int64_t begin, end;
    Comm* comm;
  };
  std::vector<Group> groups_;  // sorted, disjoint
  std::vector<std::pair<int64_t, int64_t>> started_;
  std::vector<RequestPtr> inflight_;
};

}  // namespace dsv3::dist
