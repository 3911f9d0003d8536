// Data parallelism with ZeRO-1 against one process: training steps (forward, backward, gradients
// reduce-scattered into the shards during the backward, global-norm clipping from the shards,
// AdamW with BF16 moments on each rank's shard, shards all-gathered) give the losses and parameters
// of the same steps in one process that runs the global batch as the same micro-batches and
// sums their gradients in rank order, as the reduce-scatter does. (Against one undivided batch,
// FP32 rounding of the differently split sums is amplified by AdamW and by discrete expert choices
// over steps: 5e-5 relative in the loss after 5 steps.) Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "comm_env.hpp"
#include "core/rng.hpp"
#include "dist/grad_sync.hpp"
#include "model/model.hpp"
#include "train/params.hpp"
#include "train/zero.hpp"

using namespace dsv3;

namespace {

std::vector<train::ParamRange> ranges(const model::ParamLayout& l) {
  std::vector<train::ParamRange> r;
  for (const auto& e : l.entries()) r.push_back({e.offset, e.numel, e.weight_decay, e.trainable});
  return r;
}

TEST(DataParallel, ZeroOneStepsEqualOneProcess) {
  dist::Comm& comm = *g_comm;
  const int P = comm.size(), me = comm.rank();
  const uint64_t seed = 99;
  if (me == 0) std::printf("[zero] seed %llu, %d rank(s)\n", (unsigned long long)seed, P);
  const auto c = model::load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  const int64_t B = 4, T = 17, steps = 20;
  ASSERT_EQ(B % P, 0);
  train::ParamStore ref(c), dp(c);
  ref.init_random(seed);
  dp.init_random(seed);
  const int64_t n = ref.size();
  ASSERT_EQ(train::ShardedAdamW::padded_size(n, P), n) << "layouts are padded to 16 elements";
  model::TrainOptions o;
  o.mtp_lambda = 0.3;
  train::AdamWConfig ac;
  ac.weight_decay = 0.1f;
  train::AdamW full_opt(n, ac, ranges(ref.layout()));
  train::ShardedAdamW shard_opt(comm, n, ac, ranges(dp.layout()));
  EXPECT_LE(shard_opt.state_bytes(), 4 * ((n + P - 1) / P));  // BF16 moments of 1/P
  model::TrainModel mref(c, ref.layout(), ref.params(), ref.grads());
  model::TrainModel mdp(c, dp.layout(), dp.params(), dp.grads());
  dist::GradSync sync(comm, dp.grads(), n);
  Rng r(seed);
  const int64_t Bl = B / P;
  std::vector<float> parts(size_t(n) * size_t(P));  // once: a fresh one per step cost page faults
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int32_t> tokens(size_t(B * T));
    for (auto& t : tokens) t = int32_t(r.below(uint64_t(c.vocab_size)));
    const float lr = 1e-2f;
    // The one-process reference: the micro-batches' gradients (each rank computes one, on the
    // reference's own parameters, and they are all-gathered: the work is shared, the values
    // are those of one process running them in turn), summed in rank order as the
    // reduce-scatter does, averaged.
    o.grads_ready = nullptr;
    ref.zero_grad();
    double want = mref.forward_backward(tokens.data() + me * Bl * T, Bl, T, o);
    comm.all_reduce(&want, 1, DType::F64, dist::ReduceOp::Sum);
    want /= P;
    comm.all_gather(ref.grads(), parts.data(), n, DType::F32);
    for (int64_t i = 0; i < n; ++i) {
      float g = parts[size_t(i)];
      for (int q = 1; q < P; ++q) g += parts[size_t(q * n + i)];
      ref.grads()[i] = g * (1.0f / float(P));
    }
    const float ref_norm = train::clip_grad_norm(ref.grads(), size_t(n), 1.0f);
    full_opt.step(ref.params(), ref.grads(), lr);

    dp.zero_grad();
    sync.begin_step();
    o.grads_ready = [&](int64_t b, int64_t e) { sync.ready(b, e); };
    double loss = mdp.forward_backward(tokens.data() + me * Bl * T, Bl, T, o);
    sync.finish();
    comm.all_reduce(&loss, 1, DType::F64, dist::ReduceOp::Sum);
    loss /= P;
    const float norm = sync.clip(1.0f);
    shard_opt.step(dp.params(), sync.shard(), lr);
    // The global norm from the shards: the first step's (before rounding compounds over steps).
    if (s == 0) {
      EXPECT_NEAR(norm, ref_norm, 1e-6 * ref_norm);
    }
    if (me == 0)
      std::printf("[zero] step %lld loss %.9f (one process %.9f)\n", (long long)s, loss, want);
    EXPECT_NEAR(loss, want, 1e-5 * want) << "step " << s;
  }
  double dd = 0, ww = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = dp.params()[i], b = ref.params()[i];
    dd += (a - b) * (a - b);
    ww += b * b;
  }
  const double rel = std::sqrt(dd / ww);
  if (me == 0)
    std::printf("[zero] parameters after %lld steps: %.2e relative (norm)\n", (long long)steps,
                rel);
  EXPECT_LE(rel, 1e-5);
  // Every rank holds the same parameters.
  std::vector<float> mx(dp.params(), dp.params() + n), mn = mx;
  comm.all_reduce(mx.data(), n, DType::F32, dist::ReduceOp::Max);
  comm.all_reduce(mn.data(), n, DType::F32, dist::ReduceOp::Min);
  EXPECT_EQ(mx, mn);
}

}  // namespace
