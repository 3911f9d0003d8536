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
// Low-precision communication (report §3.3.4): the hidden-state rows travel in a wire format
// (WireFormats, chosen by the caller from the training precision; F32 by default):
//   to_experts    the dispatch and the backward of combine (the output gradient going to the
//                 experts): F32, BF16 (round to nearest even), or FP8: E4M3 codes with one FP32
//                 scale per 1×128 tile (core/quant.hpp's fp8_act_quantize: scale = the tile's
//                 finite max-abs / 448, RNE, saturation, NaN/Inf as NaN, all-zero tile scale 1),
//                 dequantized on arrival (code value × scale);
//   from_experts  the combine and the backward of dispatch (the input gradient coming back):
//                 F32 or BF16 (FP8 is accepted too).
// The gate weights, slots and gate-weight gradients stay FP32.
//
// Glossary: N local tokens, D hidden, K experts per token, E routed experts, P ranks, R rows
// received (tokens other ranks sent here).
#pragma once
#include <chrono>
#include <cstdint>
#include <vector>

#include "dist/comm.hpp"

namespace dsv3::dist {

enum class Wire { F32, BF16, FP8 };
const char* wire_name(Wire w);  // "fp32" | "bf16" | "fp8"
struct WireFormats {
  Wire to_experts = Wire::F32;
  Wire from_experts = Wire::F32;
};
// Bytes of one row of D values in format w (FP8: D codes and ceil(D/128) FP32 scales).
int64_t wire_row_bytes(Wire w, int64_t D);
// Sends rows [sum(send_counts), D] (send_counts[r] rows to rank r) in format w and receives
// recv [sum(recv_counts), D] as FP32: the exact values for F32, the BF16-rounded ones for BF16,
// the dequantized 1×128 E4M3 codes for FP8.
void exchange_rows(Comm& comm, const float* send, const std::vector<int64_t>& send_counts,
                   float* recv, const std::vector<int64_t>& recv_counts, int64_t D, Wire w);

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
  WireFormats wire;                  // the formats of dispatch's call, kept for the others
  int64_t sent_rows() const { return send_tok.size(); }
  int64_t experts_per_rank() const { return E / P; }
};

// The volume of the dispatches of a step on one rank (the combine returns as many rows): token
// rows per destination rank (its own included), and the rows and bytes that leave the rank and
// its node (ranks_per_node consecutive ranks of the expert-parallel group form a node), in the
// plan's wire format (the bytes fields: the dispatch's rows; remote_combine_bytes: the
// combine's to other ranks).
struct DispatchStats {
  int ranks_per_node = 1;
  std::vector<int64_t> rows_to;               // [P]
  int64_t tokens = 0;                         // local tokens dispatched (summed over layers)
  int64_t remote_rows = 0, remote_bytes = 0;  // to other ranks
  int64_t cross_node_rows = 0, cross_node_bytes = 0;
  int64_t remote_combine_bytes = 0;
  WireFormats wire;    // of the last plan added
  double seconds = 0;  // in dispatch, combine and their backward (blocking all-to-all-v)
  void reset() {
    const int rpn = ranks_per_node;
    *this = DispatchStats{};
    ranks_per_node = rpn;
  }
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
// [N, K]) and exchanges counts and slots; then sends x [N, D] rows (in wire.to_experts),
// received into xr [R, D] (resized). Every rank of the group passes the same wire formats.
void expert_dispatch(Comm& comm, ExpertPlan& plan, std::vector<float>& xr, const float* x,
                     const int32_t* indices, const float* weights, int64_t N, int64_t K, int64_t D,
                     int64_t E, WireFormats wire = {});

// out[N, D] += the rows yr [R, D] (one per received row: the weighted sum of this rank's
// experts' outputs) sent back to their tokens (in plan.wire.from_experts).
void expert_combine(Comm& comm, const ExpertPlan& plan, float* out, const float* yr);

// Backward of combine: each rank receives dyr [R, D] (resized), the output gradient of the
// tokens it computed for, from dout [N, D] (in plan.wire.to_experts).
void expert_combine_backward(Comm& comm, const ExpertPlan& plan, std::vector<float>& dyr,
                             const float* dout);

// Backward of dispatch: the input gradients dxr [R, D] and the gate-weight gradients dwr [R, K]
// (0 in slots of other ranks' experts) go back (dxr in plan.wire.from_experts, dwr in FP32);
// dx [N, D] += their sum per token, and
// dweights [N, K] receives each choice's gate-weight gradient from the rank that owns it.
void expert_dispatch_backward(Comm& comm, const ExpertPlan& plan, float* dx, float* dweights,
                              const float* dxr, const float* dwr);

}  // namespace dsv3::dist
