// AdamW with BF16 or FP32 moments and global gradient-norm clipping, DeepSeek-V3 report §3.3.3
// and §4.2. See optimizer.hpp.
#include "train/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/vreduce.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::train {

namespace {

constexpr int64_t kMinChunk = 1 << 15;   // elements per thread at least
constexpr int64_t kNormBlock = 1 << 16;  // fixed reduction blocks of grad_sq_sum
constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'A', 'D', 'M', 'W'};
constexpr uint32_t kVersion = 1;
constexpr size_t kStateHeader = 8 + 4 + 4 + 8 + 8;  // magic, version, moment type, n, step

inline float load_moment(float x) {
  return x;
}
inline float load_moment(uint16_t x) {
  return bf16_to_f32(x);
}
inline void store_moment(float& dst, float x) {
  dst = x;
}
inline void store_moment(uint16_t& dst, float x) {
  dst = f32_to_bf16(x);
}

// The inner loop over one contiguous run of elements sharing a decay flag; no branches but the
// BF16 codec's NaN select, so it vectorizes.
template <typename M>
void adamw_run(float* __restrict p, const float* __restrict g, M* __restrict m, M* __restrict v,
               int64_t n, float b1, float b2, float decay_factor, float step_size,
               float inv_sqrt_bc2, float eps) {
  const float a1 = 1.0f - b1, a2 = 1.0f - b2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * load_moment(m[i]) + a1 * gi;
    const float vi = b2 * load_moment(v[i]) + a2 * gi * gi;
    store_moment(m[i], mi);
    store_moment(v[i], vi);
    const float denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
    p[i] = p[i] * decay_factor - step_size * mi / denom;
  }
}

std::vector<float> widen(const void* data, DType dtype, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  to_f32(out.data(), data, dtype, size_t(n));
  return out;
}

}  // namespace

AdamW::AdamW(int64_t n, const AdamWConfig& config, std::vector<ParamRange> ranges)
    : n_(n), config_(config) {
  DSV3_CHECK(n >= 0, "AdamW: negative parameter count {}", n);
  DSV3_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
             "AdamW: betas must lie in [0, 1), got {} and {}", config.beta1, config.beta2);
  DSV3_CHECK(config.eps > 0, "AdamW: eps must be positive, got {}", config.eps);
  std::sort(ranges.begin(), ranges.end(),
            [](const ParamRange& a, const ParamRange& b) { return a.offset < b.offset; });
  int64_t at = 0;
  for (const auto& r : ranges) {
    DSV3_CHECK(r.offset >= 0 && r.size >= 0 && r.offset + r.size <= n,
               "AdamW: range [{}, {}) lies outside the {} parameters", r.offset, r.offset + r.size,
               n);
    DSV3_CHECK(r.offset >= at, "AdamW: range [{}, {}) overlaps the previous range ending at {}",
               r.offset, r.offset + r.size, at);
    if (r.offset > at) segments_.push_back({at, r.offset, config.default_decay, true});
    if (r.size > 0) segments_.push_back({r.offset, r.offset + r.size, r.decay, r.train});
    at = r.offset + r.size;
  }
  if (at < n) segments_.push_back({at, n, config.default_decay, true});
  reset();
}

void AdamW::reset() {
  step_ = 0;
  const size_t n = size_t(n_);
  m16_.clear();
  v16_.clear();
  m32_.clear();
  v32_.clear();
  if (config_.moments == MomentType::BF16) {
    m16_.assign(n, 0);
    v16_.assign(n, 0);
  } else {
    m32_.assign(n, 0.0f);
    v32_.assign(n, 0.0f);
  }
}

float AdamW::exp_avg(int64_t i) const {
  DSV3_CHECK(i >= 0 && i < n_, "AdamW::exp_avg: index {} outside [0, {})", i, n_);
  return m16_.empty() ? m32_[size_t(i)] : bf16_to_f32(m16_[size_t(i)]);
}

float AdamW::exp_avg_sq(int64_t i) const {
  DSV3_CHECK(i >= 0 && i < n_, "AdamW::exp_avg_sq: index {} outside [0, {})", i, n_);
  return v16_.empty() ? v32_[size_t(i)] : bf16_to_f32(v16_[size_t(i)]);
}

void AdamW::step(float* params, const float* grads, float lr) {
  ++step_;
  if (config_.moments == MomentType::BF16) {
    step_impl(m16_.data(), v16_.data(), params, grads, lr);
  } else {
    step_impl(m32_.data(), v32_.data(), params, grads, lr);
  }
}

template <typename M>
void AdamW::step_impl(M* m, M* v, float* params, const float* grads, float lr) {
  const double t = double(step_);
  const double bc1 = 1.0 - std::pow(double(config_.beta1), t);
  const double bc2 = 1.0 - std::pow(double(config_.beta2), t);
  const float step_size = float(double(lr) / bc1);
  const float inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  const float decay_on = 1.0f - lr * config_.weight_decay;
  const float b1 = config_.beta1, b2 = config_.beta2, eps = config_.eps;
  parallel_for(
      n_,
      [&](int64_t lo, int64_t hi) {
        auto seg = std::upper_bound(segments_.begin(), segments_.end(), lo,
                                    [](int64_t x, const Segment& s) { return x < s.end; });
        for (; seg != segments_.end() && seg->begin < hi; ++seg) {
          if (!seg->train) continue;
          const int64_t b = std::max(lo, seg->begin), e = std::min(hi, seg->end);
          adamw_run(params + b, grads + b, m + b, v + b, e - b, b1, b2,
                    seg->decay ? decay_on : 1.0f, step_size, inv_sqrt_bc2, eps);
        }
      },
      kMinChunk);
}

std::vector<uint8_t> AdamW::save_state() const {
  const bool bf16 = config_.moments == MomentType::BF16;
  const size_t bytes = (bf16 ? 2 : 4) * size_t(n_);
  const uint32_t type = uint32_t(config_.moments);
  std::vector<uint8_t> out(kStateHeader + 2 * bytes);
  uint8_t* o = out.data();
  std::memcpy(o, kMagic, 8);
  std::memcpy(o + 8, &kVersion, 4);
  std::memcpy(o + 12, &type, 4);
  std::memcpy(o + 16, &n_, 8);
  std::memcpy(o + 24, &step_, 8);
  if (n_ > 0) {
    std::memcpy(o + kStateHeader, bf16 ? static_cast<const void*>(m16_.data()) : m32_.data(),
                bytes);
    std::memcpy(o + kStateHeader + bytes,
                bf16 ? static_cast<const void*>(v16_.data()) : v32_.data(), bytes);
  }
  return out;
}

void AdamW::load_state(const uint8_t* data, size_t size) {
  DSV3_CHECK(size >= kStateHeader && std::memcmp(data, kMagic, 8) == 0,
             "AdamW state: not an optimizer state blob ({} bytes, bad magic or too short)", size);
  uint32_t version, type;
  int64_t n, step;
  std::memcpy(&version, data + 8, 4);
  std::memcpy(&type, data + 12, 4);
  std::memcpy(&n, data + 16, 8);
  std::memcpy(&step, data + 24, 8);
  DSV3_CHECK(version == kVersion, "AdamW state: version {} (expected {})", version, kVersion);
  DSV3_CHECK(type <= 1, "AdamW state: unknown moment type {}", type);
  DSV3_CHECK(n == n_, "AdamW state holds {} parameters, this optimizer has {}", n, n_);
  DSV3_CHECK(step >= 0, "AdamW state: negative step {}", step);
  const DType dt = type == uint32_t(MomentType::BF16) ? DType::BF16 : DType::F32;
  const size_t bytes = dtype_size(dt) * size_t(n);
  DSV3_CHECK(size == kStateHeader + 2 * bytes,
             "AdamW state: {} bytes, expected {} for {} {} moments", size, kStateHeader + 2 * bytes,
             n, dtype_name(dt));
  set_moments(widen(data + kStateHeader, dt, n), widen(data + kStateHeader + bytes, dt, n));
  step_ = step;
}

void AdamW::set_moments(std::vector<float> m, std::vector<float> v) {
  if (config_.moments == MomentType::BF16) {
    from_f32(m16_.data(), m.data(), DType::BF16, size_t(n_));
    from_f32(v16_.data(), v.data(), DType::BF16, size_t(n_));
  } else {
    m32_ = std::move(m);
    v32_ = std::move(v);
  }
}

std::vector<StateTensor> AdamW::state_tensors(const std::string& prefix) const {
  const bool bf16 = config_.moments == MomentType::BF16;
  const DType dt = bf16 ? DType::BF16 : DType::F32;
  const void* m = bf16 ? static_cast<const void*>(m16_.data()) : m32_.data();
  const void* v = bf16 ? static_cast<const void*>(v16_.data()) : v32_.data();
  return {{prefix + "exp_avg", dt, {n_}, m},
          {prefix + "exp_avg_sq", dt, {n_}, v},
          {prefix + "step", DType::I64, {1}, &step_}};
}

void AdamW::load_state_tensors(const std::vector<StateTensor>& tensors, const std::string& prefix) {
  auto find = [&](const std::string& name) -> const StateTensor& {
    for (const auto& t : tensors) {
      if (t.name == prefix + name) return t;
    }
    DSV3_FAIL("AdamW state: tensor {}{} is missing", prefix, name);
  };
  auto moment = [&](const std::string& name) {
    const StateTensor& t = find(name);
    DSV3_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16,
               "AdamW state: {} has dtype {}, expected F32 or BF16", t.name, dtype_name(t.dtype));
    DSV3_CHECK(t.shape.size() == 1 && t.shape[0] == n_,
               "AdamW state: {} must have shape [{}] (this optimizer's size)", t.name, n_);
    return widen(t.data, t.dtype, n_);
  };
  const StateTensor& s = find("step");
  DSV3_CHECK(
      (s.dtype == DType::I64 || s.dtype == DType::I32) && s.shape.size() == 1 && s.shape[0] == 1,
      "AdamW state: {} must be one I64 or I32 value", s.name);
  int64_t step = 0;
  if (s.dtype == DType::I64) {
    std::memcpy(&step, s.data, 8);
  } else {
    int32_t v32;
    std::memcpy(&v32, s.data, 4);
    step = v32;
  }
  DSV3_CHECK(step >= 0, "AdamW state: negative step {} in {}", step, s.name);
  auto m = moment("exp_avg");
  auto v = moment("exp_avg_sq");
  set_moments(std::move(m), std::move(v));
  step_ = step;
}

double grad_sq_sum(const float* grads, size_t n) {
  const int64_t blocks = (int64_t(n) + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
  parallel_for(blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const size_t lo = size_t(b * kNormBlock), hi = std::min(n, lo + size_t(kNormBlock));
      partial[size_t(b)] = cpu::sumsq_pd(grads + lo, int64_t(hi - lo));
    }
  });
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

float clip_grad_norm(float* grads, size_t n, float max_norm) {
  const double norm = std::sqrt(grad_sq_sum(grads, n));
  if (std::isfinite(norm) && norm > double(max_norm)) {
    const float scale = float(double(max_norm) / norm);
    parallel_for(
        int64_t(n),
        [&](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) grads[i] *= scale;
        },
        kMinChunk);
  }
  return float(norm);
}

}  // namespace dsv3::train
