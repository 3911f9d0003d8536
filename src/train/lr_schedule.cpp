// LR, γ and λ schedules of DeepSeek-V3 pre-training (report §4.2), mapped onto optimizer steps.
// See lr_schedule.hpp.
#include "train/lr_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.hpp"

namespace dsv3::train {

int64_t step_at_fraction(double frac, int64_t total_steps) {
  return int64_t(std::llround(frac * double(total_steps)));
}

namespace {

// Cosine from 1 at x = 0 to `floor` at x = 1.
double cosine(double x, double floor) {
  x = std::clamp(x, 0.0, 1.0);
  return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * x));
}

}  // namespace

LrSchedule::LrSchedule(const LrScheduleConfig& config, int64_t total_steps)
    : config_(config), total_(total_steps) {
  DSV3_CHECK(total_steps >= 1, "LR schedule: total_steps must be >= 1, got {}", total_steps);
  DSV3_CHECK(config.max_lr >= 0, "LR schedule: max_lr must be >= 0, got {}", config.max_lr);
  DSV3_CHECK(config.warmup_steps >= 0 || (config.warmup_frac >= 0 && config.warmup_frac <= 1),
             "LR schedule: warmup_frac must lie in [0, 1], got {}", config.warmup_frac);
  warmup_ = config.warmup_steps >= 0
                ? config.warmup_steps
                : std::max<int64_t>(1, step_at_fraction(config.warmup_frac, total_steps));
  DSV3_CHECK(warmup_ <= total_steps, "LR schedule: {} warmup steps exceed the {} steps of the run",
             warmup_, total_steps);
  if (config.kind == LrKind::DeepSeekV3) {
    DSV3_CHECK(0 <= config.decay_start_frac && config.decay_start_frac <= config.decay_end_frac &&
                   config.decay_end_frac <= config.final_frac && config.final_frac <= 1,
               "LR schedule: need 0 <= decay_start_frac <= decay_end_frac <= final_frac <= 1, got "
               "{}, {}, {}",
               config.decay_start_frac, config.decay_end_frac, config.final_frac);
    // A warmup longer than the constant phase pushes the later boundaries back, in order.
    decay_start_ = std::max(warmup_, step_at_fraction(config.decay_start_frac, total_steps));
    decay_end_ = std::max(decay_start_, step_at_fraction(config.decay_end_frac, total_steps));
    final_start_ = std::max(decay_end_, step_at_fraction(config.final_frac, total_steps));
  } else {
    decay_start_ = warmup_;
    decay_end_ = std::max(warmup_, total_steps - 1);
    final_start_ = total_steps;
  }
}

double LrSchedule::lr(int64_t step) const {
  const double max = config_.max_lr;
  if (step < warmup_) return max * double(std::max<int64_t>(step, 0) + 1) / double(warmup_);
  switch (config_.kind) {
    case LrKind::Constant:
      return max;
    case LrKind::Cosine:
      if (decay_end_ == decay_start_) return max * config_.floor_ratio;
      return max * cosine(double(step - decay_start_) / double(decay_end_ - decay_start_),
                          config_.floor_ratio);
    case LrKind::DeepSeekV3:
      if (step < decay_start_) return max;
      if (step < decay_end_) {
        return max * cosine(double(step - decay_start_) / double(decay_end_ - decay_start_),
                            config_.floor_ratio);
      }
      if (step < final_start_) return max * config_.floor_ratio;
      return max * config_.final_ratio;
  }
  DSV3_ASSERT(false, "unknown LrKind {}", int(config_.kind));
  return 0;
}

double BiasSpeedSchedule::at(int64_t step, int64_t total_steps) const {
  return step < step_at_fraction(stop_frac, total_steps) ? gamma : 0.0;
}

double MtpLambdaSchedule::at(int64_t step, int64_t total_steps) const {
  return step < step_at_fraction(switch_frac, total_steps) ? early : late;
}

}  // namespace dsv3::train
