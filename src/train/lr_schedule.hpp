// Learning-rate, bias-update-speed and MTP-weight schedules of DeepSeek-V3 pre-training (report
// §4.2 "Training Hyper-Parameters"), scaled from the paper's 14.8T tokens to a run of
// total_steps optimizer steps. With a constant batch, tokens are proportional to steps, so a
// boundary at x tokens of the paper's run falls at step round(total_steps · x / 14.8T):
//
//   paper (tokens)                    LR                                  here (fraction of steps)
//   first 2K steps                    linear 0 → 2.2e-4                   warmup_steps
//   until 10T                         2.2e-4                              until 10/14.8 ≈ 0.6757
//   10T → 14.3T                       cosine 2.2e-4 → 2.2e-5              until 14.3/14.8 ≈ 0.9662
//   next 333B                         2.2e-5                              until 14.633/14.8 ≈
//   0.9887 last 167B                         7.3e-6 (= max/30)                   until the end
//
// The bias update speed γ is 0.001 for the first 14.3T tokens and 0 for the last 500B; the MTP
// weight λ is 0.3 for the first 10T tokens and 0.1 for the remaining 4.8T. docs/training.md
// ("Optimizer, schedule and load balancing") has the details.
#pragma once
#include <cstdint>

namespace dsv3::train {

// Boundaries of the paper's schedule as fractions of its 14.8T-token run.
inline constexpr double kV3DecayStartFrac = 10.0 / 14.8;
inline constexpr double kV3DecayEndFrac = 14.3 / 14.8;
inline constexpr double kV3FinalFrac = (14.3 + 0.333) / 14.8;

enum class LrKind : uint8_t {
  DeepSeekV3,  // warmup, constant, cosine to floor, constant floor, constant final (table above)
  Cosine,      // warmup, then cosine from max to floor·max at the last step
  Constant,    // warmup, then max
};

struct LrScheduleConfig {
  LrKind kind = LrKind::DeepSeekV3;
  double max_lr = 2.2e-4;
  // Warmup length: warmup_steps when >= 0, else round(warmup_frac · total_steps), at least 1.
  // The paper's 2K warmup steps are about 0.8% of its ~240K steps (batch 3072 → 15360
  // sequences of 4K tokens), hence the default fraction.
  int64_t warmup_steps = -1;
  double warmup_frac = 0.01;
  double floor_ratio = 0.1;         // cosine end: 2.2e-5 / 2.2e-4
  double final_ratio = 1.0 / 30.0;  // DeepSeekV3's last phase: 7.3e-6 / 2.2e-4
  double decay_start_frac = kV3DecayStartFrac;
  double decay_end_frac = kV3DecayEndFrac;
  double final_frac = kV3FinalFrac;
};

class LrSchedule {
 public:
  // Throws when total_steps < 1 or the fractions are out of order.
  LrSchedule(const LrScheduleConfig& config, int64_t total_steps);

  // The learning rate of optimizer step `step` (0-based: the first update is step 0).
  // Warmup: max·(step+1)/warmup for step < warmup, so step warmup−1 reaches max.
  double lr(int64_t step) const;
  double operator()(int64_t step) const { return lr(step); }

  int64_t total_steps() const { return total_; }
  int64_t warmup_steps() const { return warmup_; }
  // DeepSeekV3: first step of the cosine, of the floor phase and of the final phase (for
  // Cosine, decay_start = warmup and decay_end = total_steps − 1).
  int64_t decay_start() const { return decay_start_; }
  int64_t decay_end() const { return decay_end_; }
  int64_t final_start() const { return final_start_; }
  const LrScheduleConfig& config() const { return config_; }

 private:
  LrScheduleConfig config_;
  int64_t total_ = 0, warmup_ = 0, decay_start_ = 0, decay_end_ = 0, final_start_ = 0;
};

// γ of the auxiliary-loss-free balancing: `gamma` until stop_frac of the run, then 0.
struct BiasSpeedSchedule {
  double gamma = 0.001;
  double stop_frac = kV3DecayEndFrac;  // 14.3T of 14.8T
  double at(int64_t step, int64_t total_steps) const;
};

// λ of the MTP loss: `early` until switch_frac of the run, then `late`.
struct MtpLambdaSchedule {
  double early = 0.3;
  double late = 0.1;
  double switch_frac = kV3DecayStartFrac;  // 10T of 14.8T
  double at(int64_t step, int64_t total_steps) const;
};

// The step at which a fraction of a run of total_steps begins: round(frac · total_steps).
int64_t step_at_fraction(double frac, int64_t total_steps);

}  // namespace dsv3::train
