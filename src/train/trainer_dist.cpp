// The distributed parts of a `dsv3 train` run (trainer_state.hpp; docs/distributed.md): the
// data-parallel and expert-parallel groups, the per-rank arena holding the replicated parameters
// and this rank's routed experts, ZeRO-1 over the data-parallel group, the gradient reduction
// (replicated parts over every rank, experts over their data-parallel group) overlapped with the
// backward, the global gradient norm, the global losses and expert loads, and the gather of the
// whole model onto rank 0 (samples, the final export).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "train/trainer_state.hpp"

namespace dsv3::train {

void setup_parallel(TrainerState& s, const TrainConfig& cfg, dist::Comm* world) {
  s.world = world;
  s.ranks = world ? world->size() : 1;
  s.rank = world ? world->rank() : 0;
  if (!s.distributed()) return;
  cfg.validate_layout(s.ranks);
  s.ep = int(cfg.ep);
  s.dp = s.ranks / s.ep;
  s.dp_rank = s.rank / s.ep;
  s.ep_rank = s.rank % s.ep;
  // Collectives in the same order on every rank: the EP groups (consecutive ranks), then DP.
  s.ep_comm = world->split(s.dp_rank, s.ep_rank);
  s.dp_comm = world->split(s.ep_rank, s.dp_rank);
  s.dispatch.ranks_per_node = cfg.ranks_per_node > 0 ? int(cfg.ranks_per_node) : s.ep;
  if (s.ep > 1) {
    const model::ModelConfig c = cfg.model_config(cfg.vocab_size);
    const int64_t per = c.n_routed_experts / s.ep;
    s.shard = {s.ep_rank * per, (s.ep_rank + 1) * per};
    if (cfg.ranks_per_node > 0) s.node_limit = {s.ep / cfg.ranks_per_node, cfg.max_nodes};
  }
}

void setup_parallel_model(TrainerState& s, const TrainConfig& cfg) {
  // The routed experts' ranges of the local arena (contiguous per layer, in table order).
  s.expert_ranges.clear();
  for (const auto& e : s.store->entries()) {
    if (model::routed_expert_of(e.name) < 0) continue;
    const int64_t b = e.offset, end = e.offset + (e.numel + 15) / 16 * 16;
    if (!s.expert_ranges.empty() && s.expert_ranges.back().second == b)
      s.expert_ranges.back().second = end;
    else
      s.expert_ranges.emplace_back(b, end);
  }
  if (!s.distributed()) return;
  const int64_t n = s.store->size();
  s.store->pad_arenas(ShardedAdamW::padded_size(n, s.dp));
  s.zopt = std::make_unique<ShardedAdamW>(*s.dp_comm, n, cfg.adamw_config(),
                                          adamw_ranges(s.store->layout(), true));
  // Reduce-scattered over the DP group into the ZeRO-1 shards; everything but the routed experts
  // is summed over the EP group too (its ranks share a DP index and hold the same replicated
  // parameters); the experts are held by their DP group only.
  s.sync = std::make_unique<dist::GradSync>(*s.dp_comm, s.store->grads(), n);
  if (s.ep > 1) s.sync->set_outer(*s.ep_comm, s.expert_ranges);
  s.sync->set_bucket_elems(int64_t(cfg.grad_bucket_mb * double(1 << 20)) / 4);
  DSV3_CHECK(
      s.sync->shard_begin() == s.zopt->shard_begin() && s.sync->shard_end() == s.zopt->shard_end(),
      "rank {}: gradient shard [{}, {}) differs from the optimizer's [{}, {})", s.rank,
      s.sync->shard_begin(), s.sync->shard_end(), s.zopt->shard_begin(), s.zopt->shard_end());
}

std::pair<int64_t, int64_t> local_rows(const TrainerState& s, int64_t batch) {
  const int64_t per = batch / s.ranks;
  return {s.rank * per, (s.rank + 1) * per};
}

void reduce_step_stats(TrainerState& s, StepStats& st) {
  if (!s.distributed()) return;
  std::vector<double> l = {st.main_loss, st.balance_loss, st.loss};
  l.insert(l.end(), st.mtp_loss.begin(), st.mtp_loss.end());
  s.world->all_reduce(l.data(), int64_t(l.size()), DType::F64, dist::ReduceOp::Sum);
  for (auto& v : l) v /= double(s.ranks);
  st.main_loss = l[0];
  st.balance_loss = l[1];
  st.loss = l[2];
  for (size_t k = 0; k < st.mtp_loss.size(); ++k) st.mtp_loss[k] = l[3 + k];
  // The expert loads of the global batch: the bias update sees what one process would.
  std::vector<int64_t> flat;
  for (const auto& v : st.expert_load) flat.insert(flat.end(), v.begin(), v.end());
  s.world->all_reduce(flat.data(), int64_t(flat.size()), DType::I64, dist::ReduceOp::Sum);
  size_t at = 0;
  for (auto& v : st.expert_load)
    for (auto& x : v) x = flat[at++];
}

std::unique_ptr<ParamStore> gather_full_store(TrainerState& s) {
  if (!s.distributed()) return nullptr;
  // Owners of the experts rank 0 lacks: the EP ranks of data-parallel index 0 (world ranks
  // 1..ep-1), each sending its experts' tensors as one message in table order.
  if (s.ep == 1) return nullptr;  // rank 0 holds everything
  const int tag = 71;
  if (s.dp_rank == 0 && s.rank != 0) {
    std::vector<float> buf;
    for (const auto& e : s.store->entries())
      if (model::routed_expert_of(e.name) >= 0)
        buf.insert(buf.end(), s.store->params() + e.offset, s.store->params() + e.offset + e.numel);
    s.world->send(buf.data(), int64_t(buf.size()), DType::F32, 0, tag);
  }
  if (s.rank != 0) return nullptr;
  auto full = std::make_unique<ParamStore>(s.mc);
  for (const auto& e : s.store->entries())
    std::copy_n(s.store->params() + e.offset, e.numel, full->param(e.name));
  const int64_t per = s.mc.n_routed_experts / s.ep;
  for (int r = 1; r < s.ep; ++r) {
    const model::ParamLayout theirs(s.mc, {r * per, (r + 1) * per});
    int64_t count = 0;
    for (const auto& e : theirs.entries())
      if (model::routed_expert_of(e.name) >= 0) count += e.numel;
    std::vector<float> buf(static_cast<size_t>(count));
    s.world->recv(buf.data(), count, DType::F32, r, tag);
    int64_t at = 0;
    for (const auto& e : theirs.entries())
      if (model::routed_expert_of(e.name) >= 0) {
        std::copy_n(buf.data() + at, e.numel, full->param(e.name));
        at += e.numel;
      }
  }
  return full;
}

nlohmann::json layout_json(const TrainerState& s) {
  return {{"world", s.ranks},
          {"dp", s.dp},
          {"ep", s.ep},
          {"ranks_per_node", s.dispatch.ranks_per_node},
          {"nodes", s.node_limit.nodes},
          {"max_nodes", s.node_limit.max_nodes}};
}

int64_t state_bytes(const TrainerState& s) {
  int64_t b = s.store->arena_bytes();
  if (s.zopt) b += s.zopt->state_bytes();
  if (s.opt) b += int64_t(s.opt->moment_type() == MomentType::BF16 ? 4 : 8) * s.opt->size();
  return b;
}

}  // namespace dsv3::train
