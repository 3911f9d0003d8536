// Helpers of the engine tests: run a set of requests through an Engine and collect each one's
// tokens, log-probabilities, finish reason and stats.
#pragma once
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "model/model.hpp"
#include "serve/engine.hpp"

namespace dsv3::test {

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::vector<std::pair<int32_t, float>>> top;
  serve::FinishReason finish = serve::FinishReason::None;
  std::string error;
  serve::RequestStats stats;
  int finals = 0;
};

// Submits every request at once (a cancel_after[i] >= 0 cancels request i after that many
// tokens) and waits for all final events.
inline std::vector<Outcome> run_requests(serve::Engine& e,
                                         const std::vector<serve::RequestParams>& reqs,
                                         const std::vector<int64_t>& cancel_after = {}) {
  std::vector<Outcome> out(reqs.size());
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  std::vector<serve::RequestId> ids(reqs.size(), 0);
  std::unique_lock<std::mutex> lk(mu);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const int64_t cut = i < cancel_after.size() ? cancel_after[i] : -1;
    ids[i] = e.submit(
        reqs[i],
        [&, i, cut](const serve::TokenEvent& ev) {
          std::lock_guard<std::mutex> g(mu);
          Outcome& o = out[i];
          if (ev.token >= 0) {
            o.tokens.push_back(ev.token);
            o.logprobs.push_back(ev.logprob);
            o.top.push_back(ev.top);
            if (cut >= 0 && int64_t(o.tokens.size()) == cut &&
                ev.finish == serve::FinishReason::None)
              e.cancel(ids[i]);
          }
          if (ev.finish != serve::FinishReason::None) {
            o.finish = ev.finish;
            o.error = ev.error;
            ++o.finals;
            ++done;
            cv.notify_all();
          }
        },
        &out[i].stats);
  }
  cv.wait(lk, [&] { return done == reqs.size(); });
  return out;
}

inline std::unique_ptr<model::Model> load_tiny(const char* name) {
  return model::Model::load(std::string(DSV3_TEST_DATA) + "/" + name);
}

// Same tokens, and log-probabilities (functions of the logits) within tol.
inline void expect_same(const Outcome& a, const Outcome& b, float tol, const std::string& what) {
  ASSERT_EQ(a.tokens, b.tokens) << what;
  for (size_t t = 0; t < a.logprobs.size(); ++t) {
    EXPECT_NEAR(a.logprobs[t], b.logprobs[t], tol) << what << " token " << t;
    ASSERT_EQ(a.top[t].size(), b.top[t].size()) << what;
    for (size_t k = 0; k < a.top[t].size(); ++k)
      EXPECT_NEAR(a.top[t][k].second, b.top[t][k].second, tol) << what << " token " << t;
  }
}

}  // namespace dsv3::test
