// AdamW as DeepSeek-V3 trains with it (report §4.2 hyper-parameters, §3.3.3 low-precision
// optimizer state): β1 = 0.9, β2 = 0.95, decoupled weight decay 0.1, FP32 master weights updated
// in place over one flat buffer, first and second moments stored in BF16 (an option keeps them in
// FP32), bias-corrected; plus global gradient-norm clipping (the report clips at 1.0).
//
// The update follows torch.optim.AdamW step for step, so parity with PyTorch runs is direct:
//   m ← β1·m + (1−β1)·g            v ← β2·v + (1−β2)·g²
//   p ← p·(1 − lr·wd)  −  (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)
// The weight decay is decoupled (scaled by lr, not added to g) and applies only to the ranges the
// caller marks (no decay on norms and biases: see train/params.hpp for the model's choice).
//
// BF16 moments: m and v are updated in FP32 from their stored BF16 values and rounded back to
// nearest-even; this step's parameter update uses the unrounded FP32 values. docs/training.md
// ("Optimizer, schedule and load balancing") explains why round-to-nearest suffices here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace dsv3::train {

enum class MomentType : uint8_t { BF16, F32 };

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  MomentType moments = MomentType::BF16;
  bool default_decay = true;  // for elements no ParamRange covers
};

// Elements [offset, offset + size) of the flat buffer: whether weight decay applies, and whether
// they are updated at all (train = false: left untouched, e.g. the routing correction bias, which
// the balance update moves instead).
struct ParamRange {
  int64_t offset = 0;
  int64_t size = 0;
  bool decay = true;
  bool train = true;
};

// A non-owning view of one piece of optimizer state, for checkpoints (safetensors tensors).
struct StateTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

class AdamW {
 public:
  // n parameters; ranges must be disjoint and inside [0, n) (any order).
  explicit AdamW(int64_t n, const AdamWConfig& config = {}, std::vector<ParamRange> ranges = {});

  // One step at learning rate lr over params [n] (FP32 master weights, updated in place) with
  // grads [n]; increments step_count() first, so bias correction uses t = step_count().
  void step(float* params, const float* grads, float lr);

  int64_t size() const { return n_; }
  int64_t step_count() const { return step_; }
  const AdamWConfig& config() const { return config_; }
  MomentType moment_type() const { return config_.moments; }
  // Moments of element i widened to float.
  float exp_avg(int64_t i) const;
  float exp_avg_sq(int64_t i) const;
  // Zeroes moments and the step counter.
  void reset();

  // Checkpoint state as bytes: a small header (magic, version, moment type, n, step) followed by
  // both moment arrays. load_state accepts either moment type and converts to this optimizer's.
  std::vector<uint8_t> save_state() const;
  void load_state(const uint8_t* data, size_t size);

  // The same state as named tensors: <prefix>exp_avg [n] and <prefix>exp_avg_sq [n] in the moment
  // dtype (BF16 or F32), <prefix>step I64 [1]. The views point into this optimizer.
  std::vector<StateTensor> state_tensors(const std::string& prefix = "optimizer.") const;
  // Restores from tensors named as state_tensors writes them (F32 or BF16 moments, converted to
  // this optimizer's type; step I64 or I32). Throws naming a missing or mis-shaped tensor.
  void load_state_tensors(const std::vector<StateTensor>& tensors,
                          const std::string& prefix = "optimizer.");

 private:
  struct Segment {
    int64_t begin, end;
    bool decay, train;
  };
  template <typename M>
  void step_impl(M* m, M* v, float* params, const float* grads, float lr);
  void set_moments(std::vector<float> m, std::vector<float> v);

  int64_t n_ = 0;
  int64_t step_ = 0;
  AdamWConfig config_;
  std::vector<Segment> segments_;  // sorted, covering [0, n) exactly
  std::vector<uint16_t> m16_, v16_;
  std::vector<float> m32_, v32_;
};

// Σ g² over n gradients, accumulated in double in fixed blocks (the result does not depend on
// the thread count). Data-parallel callers all-reduce this before taking the root.
double grad_sq_sum(const float* grads, size_t n);

// Global L2 norm of grads [n] (accumulated in double); when it exceeds max_norm, scales grads by
// max_norm / norm. Returns the norm before clipping. A non-finite norm leaves grads unchanged:
// the caller should skip the step.
float clip_grad_norm(float* grads, size_t n, float max_norm);

}  // namespace dsv3::train
