// Expert-parallel dispatch and combine (DeepSeek-V3 report §3.2.2): the routed experts of a MoE
// layer are partitioned over the ranks of an expert-parallel group (rank r owns experts
// [r·E/P, (r+1)·E/P)); every rank routes its own tokens, then
//   dispatch  sends each token's hidden state ONCE to every rank that owns at least one of its K
//             chosen experts (not once per expert), with the (local expert, gate weight) pairs
//             that rank is to compute;
//   combine   returns, per (token, rank), the weighted sum of that rank's experts' outputs, and
//             the sending rank adds them up (the shared experts stay local).
// The backward mirrors both: the output gradient goes out once per (token, rank), and the input
// gradient and the gate-weight gradients come back. Counts are exchanged first, then the rows
// with all-to-all-v; no token is dropped.
//
// Glossary: N local tokens, D hidden, K experts per token, E routed experts, P ranks, R rows
// received (tokens other ranks sent here).
#pragma once
#include <chrono>
#include <cstdint>
#include <vector>

#include "dist/comm.hpp"

namespace dsv3::dist {

struct ExpertPlan {
  int64_t N = 0, K = 0, D = 0, E = 0, P = 1, R = 0;
  // Sent: token rows grouped by destination; send_tok[i] is the local token of sent row i.
  std::vector<int64_t> send_counts, send_displs;  // [P] rows
  std::vector<int64_t> recv_counts, recv_displs;  // [P] rows
  std::vector<int32_t> send_tok;                  // [sent rows]
  // Received: for each received row, its K slots: the local expert (or -1 when the choice is
  // another rank's) and the gate weight.
  std::vector<int32_t> recv_expert;  // [R, K]
  std::vector<float> recv_weight;    // [R, K]
  std::vector<int32_t> idx;          // [N, K] the local routing (for the backward)
  int64_t sent_rows() const { return send_tok.size(); }
  int64_t experts_per_rank() const { return E / P; }
};

// The volume of the dispatches of a step on one rank (the combine returns as many rows): token
// rows per destination rank (its own included), and the rows and bytes that leave the rank and
// its node (ranks_per_node consecutive ranks of the expert-parallel group form a node).
struct DispatchStats {
  int ranks_per_node = 1;
  std::vector<int64_t> rows_to;               // [P]
  int64_t tokens = 0;                         // local tokens dispatched (summed over layers)
  int64_t remote_rows = 0, remote_bytes = 0;  // to other ranks
  int64_t cross_node_rows = 0, cross_node_bytes = 0;
  double seconds = 0;  // in dispatch, combine and their backward (blocking all-to-all-v)
  void reset() { *this = DispatchStats{ranks_per_node, {}, 0, 0, 0, 0, 0, 0}; }
  void add(const ExpertPlan& plan, int rank);
};

// Adds the seconds of its scope to stats->seconds (null: nothing).
class DispatchTimer {
 public:
  explicit DispatchTimer(DispatchStats* s) : s_(s), t0_(std::chrono::steady_clock::now()) {}
  ~DispatchTimer() {
    if (s_)
      s_->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  DispatchStats* s_;
  std::chrono::steady_clock::time_point t0_;
};

// Builds the plan from the local routing (indices [N, K] of experts in [0, E), gate weights
// [N, K]) and exchanges counts and slots; then sends x [N, D] rows, received into xr [R, D]
// (resized).
void expert_dispatch(Comm& comm, ExpertPlan& plan, std::vector<float>& xr, const float* x,
                     const int32_t* indices, const float* weights, int64_t N, int64_t K, int64_t D,
                     int64_t E);

// out[N, D] += the rows yr [R, D] (one per received row: the weighted sum of this rank's
// experts' outputs) sent back to their tokens.
void expert_combine(Comm& comm, const ExpertPlan& plan, float* out, const float* yr);

// Backward of combine: each rank receives dyr [R, D] (resized), the output gradient of the
// tokens it computed for, from dout [N, D].
void expert_combine_backward(Comm& comm, const ExpertPlan& plan, std::vector<float>& dyr,
                             const float* dout);

// Backward of dispatch: the input gradients dxr [R, D] and the gate-weight gradients dwr [R, K]
// (0 in slots of other ranks' experts) go back; dx [N, D] += their sum per token, and
// dweights [N, K] receives each choice's gate-weight gradient from the rank that owns it.
void expert_dispatch_backward(Comm& comm, const ExpertPlan& plan, float* dx, float* dweights,
                              const float* dxr, const float* dwr);

}  // namespace dsv3::dist
