// Expert parallelism in the training step: every rank runs the step on its share of the global
// batch with the routed experts split over the ranks (each token sent once per owning rank, the
// experts run where they live, the sums sent back), gradients reduced during the backward; the
// loss, the gradients and the expert loads equal the one-process step of the whole batch.
// Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "comm_env.hpp"
#include "core/rng.hpp"
#include "dist/grad_sync.hpp"
#include "model/model.hpp"
#include "train/params.hpp"

using namespace dsv3;

namespace {

TEST(ExpertParallel, TrainingStepEqualsOneProcess) {
  dist::Comm& comm = *g_comm;
  const int P = comm.size(), me = comm.rank();
  const uint64_t seed = 8080;
  if (me == 0) std::printf("[ep-train] seed %llu, %d rank(s)\n", (unsigned long long)seed, P);
  const auto c = model::load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  train::ParamStore store(c);
  store.init_random(seed);
  const int64_t B = 4, T = 17, n = store.size();
  ASSERT_EQ(B % P, 0);
  std::vector<int32_t> tokens(size_t(B * T));
  Rng r(seed);
  for (auto& t : tokens) t = int32_t(r.below(uint64_t(c.vocab_size)));
  model::TrainOptions o;
  o.mtp_lambda = 0.3;
  o.balance_alpha = 1e-3;
  model::TrainModel m(c, store.layout(), store.params(), store.grads());

  store.zero_grad();
  model::StepStats full_st;
  const double full_loss = m.forward_backward(tokens.data(), B, T, o, &full_st);
  const std::vector<float> full(store.grads(), store.grads() + n);

  store.zero_grad();
  dist::GradSync sync(comm, store.grads(), n);
  sync.begin_step();
  o.grads_ready = [&](int64_t b, int64_t e) { sync.ready(b, e); };
  o.ep = &comm;
  const int64_t Bl = B / P;
  model::StepStats st;
  double loss = m.forward_backward(tokens.data() + me * Bl * T, Bl, T, o, &st);
  sync.finish();
  comm.all_reduce(&loss, 1, DType::F64, dist::ReduceOp::Sum);
  loss /= P;
  EXPECT_NEAR(loss, full_loss, 1e-6 * full_loss);
  // Expert loads: each rank counts its own tokens' choices; their sum is the global load.
  ASSERT_EQ(st.expert_load.size(), full_st.expert_load.size());
  for (size_t l = 0; l < st.expert_load.size(); ++l) {
    std::vector<int64_t> load = st.expert_load[l];
    comm.all_reduce(load.data(), int64_t(load.size()), DType::I64, dist::ReduceOp::Sum);
    EXPECT_EQ(load, full_st.expert_load[l]) << "MoE layer " << l;
  }
  float gmax = 0;
  double dd = 0, ww = 0;
  for (float g : full) gmax = std::max(gmax, std::fabs(g));
  // Every rank checks its ZeRO-1 shard of the reduce-scattered gradient.
  for (int64_t i = sync.shard_begin(); i < sync.shard_end(); ++i) {
    const double g = sync.shard()[i - sync.shard_begin()], want = full[size_t(i)];
    dd += (g - want) * (g - want);
    ww += want * want;
    EXPECT_NEAR(g, want, 1e-5 * gmax) << "gradient element " << i;
  }
  double sums[2] = {dd, ww};
  comm.all_reduce(sums, 2, DType::F64, dist::ReduceOp::Sum);
  const double rel = std::sqrt(sums[0] / sums[1]);
  if (me == 0)
    std::printf("[ep-train] loss %.9f (one process %.9f), gradient difference %.2e (norm)\n", loss,
                full_loss, rel);
  EXPECT_LE(rel, 2e-6);
}

}  // namespace
