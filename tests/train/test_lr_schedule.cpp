// DeepSeek-V3 pre-training schedules (report §4.2) mapped onto steps: LR values at every
// breakpoint, the plain cosine and constant variants, the bias-update speed γ and the MTP weight λ.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "train/lr_schedule.hpp"

using namespace dsv3::train;

namespace {

// A 14800-step run: one step per billion of the paper's tokens, so every boundary is exact.
LrSchedule paper_run() {
  LrScheduleConfig c;
  c.warmup_steps = 2000;
  return LrSchedule(c, 14800);
}

}  // namespace

TEST(LrSchedule, DeepSeekV3Breakpoints) {
  const LrSchedule s = paper_run();
  const double max = 2.2e-4, floor = 2.2e-5;
  EXPECT_EQ(s.warmup_steps(), 2000);
  EXPECT_EQ(s.decay_start(), 10000);  // 10T tokens
  EXPECT_EQ(s.decay_end(), 14300);    // 14.3T
  EXPECT_EQ(s.final_start(), 14633);  // 14.3T + 333B
  EXPECT_DOUBLE_EQ(s.lr(0), max / 2000);
  EXPECT_DOUBLE_EQ(s.lr(999), max / 2);
  EXPECT_DOUBLE_EQ(s.lr(1999), max);
  EXPECT_DOUBLE_EQ(s.lr(2000), max);
  EXPECT_DOUBLE_EQ(s.lr(9999), max);
  EXPECT_DOUBLE_EQ(s.lr(10000), max);
  EXPECT_NEAR(s.lr(12150), (max + floor) / 2, 1e-15);  // cosine midpoint
  EXPECT_NEAR(s.lr(14299), floor, 1e-10);
  EXPECT_GT(s.lr(14299), floor);
  EXPECT_DOUBLE_EQ(s.lr(14300), floor);
  EXPECT_DOUBLE_EQ(s.lr(14632), floor);
  EXPECT_DOUBLE_EQ(s.lr(14633), max / 30);  // 7.3e-6
  EXPECT_NEAR(s.lr(14633), 7.3e-6, 0.05e-6);
  EXPECT_DOUBLE_EQ(s.lr(14799), max / 30);
  EXPECT_DOUBLE_EQ(s(20000), max / 30);  // past the end: stays at the final value
  // Non-increasing after warmup.
  for (int64_t i = 2000; i + 1 < 14800; ++i) ASSERT_LE(s.lr(i + 1), s.lr(i)) << i;
}

TEST(LrSchedule, ScalesToShortRuns) {
  LrScheduleConfig c;
  c.max_lr = 1e-3;
  const LrSchedule s(c, 200);  // default warmup: 1% of the run
  EXPECT_EQ(s.warmup_steps(), 2);
  EXPECT_EQ(s.decay_start(), 135);  // round(200 · 10/14.8)
  EXPECT_EQ(s.decay_end(), 193);    // round(200 · 14.3/14.8)
  EXPECT_EQ(s.final_start(), 198);  // round(200 · 14.633/14.8)
  EXPECT_DOUBLE_EQ(s.lr(0), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr(1), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(134), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(193), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr(199), 1e-3 / 30);
  // A 1-step run still takes a step at a nonzero rate.
  const LrSchedule one(c, 1);
  EXPECT_DOUBLE_EQ(one.lr(0), 1e-3);
}

TEST(LrSchedule, CosineAndConstant) {
  LrScheduleConfig c;
  c.kind = LrKind::Cosine;
  c.max_lr = 1.0;
  c.warmup_steps = 10;
  const LrSchedule s(c, 111);
  EXPECT_DOUBLE_EQ(s.lr(4), 0.5);
  EXPECT_DOUBLE_EQ(s.lr(10), 1.0);
  EXPECT_NEAR(s.lr(60), 0.55, 1e-12);  // halfway from step 10 to 110: (1 + 0.1) / 2
  EXPECT_NEAR(s.lr(110), 0.1, 1e-12);
  EXPECT_NEAR(s.lr(500), 0.1, 1e-12);
  c.kind = LrKind::Constant;
  const LrSchedule k(c, 111);
  EXPECT_DOUBLE_EQ(k.lr(9), 1.0);
  EXPECT_DOUBLE_EQ(k.lr(110), 1.0);
}

TEST(LrSchedule, RejectsBadConfigs) {
  LrScheduleConfig c;
  EXPECT_THROW(LrSchedule(c, 0), dsv3::Error);
  c.warmup_steps = 11;
  EXPECT_THROW(LrSchedule(c, 10), dsv3::Error);
  c.warmup_steps = -1;
  c.decay_end_frac = 0.5;  // before decay_start_frac
  EXPECT_THROW(LrSchedule(c, 10), dsv3::Error);
}

TEST(LrSchedule, BiasSpeedAndMtpLambda) {
  const BiasSpeedSchedule gamma;
  EXPECT_DOUBLE_EQ(gamma.at(0, 14800), 0.001);
  EXPECT_DOUBLE_EQ(gamma.at(14299, 14800), 0.001);  // first 14.3T tokens
  EXPECT_DOUBLE_EQ(gamma.at(14300, 14800), 0.0);    // last 500B
  const MtpLambdaSchedule lambda;
  EXPECT_DOUBLE_EQ(lambda.at(0, 14800), 0.3);
  EXPECT_DOUBLE_EQ(lambda.at(9999, 14800), 0.3);  // first 10T
  EXPECT_DOUBLE_EQ(lambda.at(10000, 14800), 0.1);
  EXPECT_DOUBLE_EQ(lambda.at(199, 200), 0.1);
}
