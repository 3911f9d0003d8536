// Sampling settings are checked (issue 12): a NaN or negative temperature, top_p outside (0, 1]
// or a negative top_k is an error naming the setting, from validate_sampling and from the
// Sampler itself, rather than sampling garbage.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "serve/sampler.hpp"

using namespace dsv3::serve;

namespace {

void expect_refused(SamplingParams p, const std::string& needle) {
  try {
    Sampler s(p);
    ADD_FAILURE() << "accepted temperature " << p.temperature << " top_p " << p.top_p << " top_k "
                  << p.top_k;
  } catch (const dsv3::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(SamplingParams, OutOfRangeSettingsAreRefused) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = INFINITY;
  for (float t : {-1.f, nan, inf, -inf}) expect_refused({t, 0, 1.f, 0}, "temperature");
  for (float p : {1.5f, 0.f, -0.5f, nan}) expect_refused({1.f, 0, p, 0}, "top_p");
  expect_refused({1.f, -3, 1.f, 0}, "top_k");
}

TEST(SamplingParams, ValidSettingsSample) {
  const float logits[4] = {0.f, 3.f, 1.f, -2.f};
  for (SamplingParams p : {SamplingParams{0.f, 0, 1.f, 1}, SamplingParams{0.7f, 2, 0.9f, 2},
                           SamplingParams{1e-3f, 0, 1e-6f, 3}}) {
    EXPECT_NO_THROW(validate_sampling(p));
    Sampler s(p);
    const int32_t id = s.sample(logits, 4);
    EXPECT_TRUE(id >= 0 && id < 4) << id;
  }
}

}  // namespace
