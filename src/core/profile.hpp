// Where a training step spends its time: GEMMs, attention, MoE permutation (sort, gather,
// scatter, combine), router, loss softmax. The step is driven by one thread (the kernels
// parallelize inside), so the accumulators are plain process-wide doubles; timing is off unless
// enabled (model::TrainOptions::profile) and costs two clock reads per timed call when on.
#pragma once
#include <chrono>

namespace dsv3 {

struct StepProfile {
  double gemm_s = 0;         // linear layers, router, head (outside attention)
  double attention_s = 0;    // scores, softmax, P·V and their backward (GEMMs included)
  double moe_permute_s = 0;  // counting sort, gather/scatter, weighted combine
  double router_s = 0;       // scores, group-limited top-K (GEMM excluded), router backward
  double loss_s = 0;         // softmax / cross-entropy over the vocabulary (GEMMs excluded)
  double experts_s = 0;      // routed experts (their GEMMs, run expert-parallel, included)
  int64_t gemm_calls = 0;
};

namespace detail {
inline bool g_profiling = false;
inline StepProfile g_profile;
inline int g_grouped = 0;  // > 0 inside a phase that times its own GEMMs
}  // namespace detail

inline void set_profiling(bool on) {
  detail::g_profiling = on;
}
inline bool profiling() {
  return detail::g_profiling;
}
inline StepProfile& step_profile() {
  return detail::g_profile;
}

// GEMMs issued while one is alive are timed by the enclosing phase, not as gemm_s.
class GroupedScope {
 public:
  GroupedScope() { ++detail::g_grouped; }
  ~GroupedScope() { --detail::g_grouped; }
  GroupedScope(const GroupedScope&) = delete;
  GroupedScope& operator=(const GroupedScope&) = delete;
};
inline bool gemm_grouped() {
  return detail::g_grouped > 0;
}

// Adds the scope's wall time to *slot when profiling is on.
class ProfileScope {
 public:
  explicit ProfileScope(double StepProfile::*slot) : slot_(profiling() ? slot : nullptr) {
    if (slot_) t0_ = clock::now();  // inference calls pass here too: no clock read when off
  }
  ~ProfileScope() {
    if (slot_)
      detail::g_profile.*slot_ += std::chrono::duration<double>(clock::now() - t0_).count();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  using clock = std::chrono::steady_clock;
  double StepProfile::*slot_;
  clock::time_point t0_;
};

}  // namespace dsv3
