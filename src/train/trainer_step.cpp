// The training step of `dsv3 train` (trainer_state.hpp): forward/backward with MTP and the
// balance loss, gradient clipping, AdamW on the LR schedule, and the auxiliary-loss-free bias
// update (DeepSeek-V3 report §2.1.2) from the step's expert loads.
#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/log.hpp"
#include "train/balance.hpp"
#include "train/trainer_state.hpp"

namespace dsv3::train {

namespace {

std::string bias_name(int64_t layer) {
  return fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", layer);
}

}  // namespace

TrainOptions step_options(const TrainConfig& cfg, int64_t step, int64_t total) {
  TrainOptions o;
  if (cfg.mtp)
    o.mtp_lambda = MtpLambdaSchedule{cfg.mtp_lambda, cfg.mtp_lambda_late}.at(step, total);
  o.tie_mtp_embeddings = true;
  o.recompute = cfg.recompute;
  o.precision = cpu::parse_precision(cfg.precision);
  o.balance_alpha = cfg.alpha;
  return o;
}

std::vector<int> moe_layers(const model::ModelConfig& c, bool mtp) {
  std::vector<int> r;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    if (c.is_moe_layer(i)) r.push_back(int(i));
  if (mtp)
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k)
      if (c.is_moe_layer(c.num_hidden_layers + k)) r.push_back(int(c.num_hidden_layers + k));
  return r;
}

std::vector<ParamRange> adamw_ranges(const ParamLayout& layout, bool tie_mtp) {
  std::vector<ParamRange> r;
  for (const auto& e : layout.entries()) {
    const bool tied_copy =
        tie_mtp && e.mtp &&
        (e.name.ends_with(".embed_tokens.weight") || e.name.ends_with(".shared_head.head.weight"));
    r.push_back({e.offset, e.numel, e.weight_decay, e.trainable && !tied_copy});
  }
  return r;
}

void parallel_options(const TrainerState& s, TrainOptions& o) {
  if (!s.distributed() || s.ep == 1) return;
  o.ep = s.ep_comm.get();
  o.node_limit = s.node_limit;
}

StepRecord train_step(TrainerState& s, const TrainConfig& cfg, std::vector<int32_t>& buf) {
  const auto t0 = Clock::now();
  const int64_t B = cfg.batch, W = cfg.seq_len + 1;
  s.sampler->next(buf.data());
  s.store->zero_grad();
  StepStats st;
  TrainOptions o = step_options(cfg, s.step, s.total);
  // Distributed: this rank's rows of the global batch, experts over the EP group, gradients
  // reduced while the backward runs.
  const auto [r0, r1] = local_rows(s, B);
  double comm_wait = kNoValue;
  if (s.distributed()) {
    parallel_options(s, o);
    s.dispatch.reset();
    if (o.ep) o.dispatch = &s.dispatch;
    s.sync->begin_step();
    if (cfg.grad_overlap) o.grads_ready = [&s](int64_t b, int64_t e) { s.sync->ready(b, e); };
  }
  s.model->forward_backward(buf.data() + r0 * W, r1 - r0, W, o, &st);
  if (s.distributed()) {
    comm_wait = s.sync->finish();
    reduce_step_stats(s, st);
  }
  // Distributed: the global norm from the ZeRO-1 shards of the gradient (each element once).
  const float norm = s.distributed() ? s.sync->clip(float(cfg.grad_clip))
                                     : clip_grad_norm(s.store->grads(), size_t(s.store->size()),
                                                      float(cfg.grad_clip));
  // A non-finite loss or gradient stops the run before anything of the step is applied or
  // written: the weights, metrics.jsonl and the last checkpoint stay as they were.
  const bool mtp_finite = std::all_of(st.mtp_loss.begin(), st.mtp_loss.end(),
                                      [](double l) { return std::isfinite(l); });
  DSV3_CHECK(std::isfinite(st.main_loss) && mtp_finite && std::isfinite(norm),
             "step {}: the {} is not finite (loss {}, MTP loss {}, gradient norm {}): training "
             "stopped before the update, and the last checkpoint is as it was (a lower lr or "
             "grad_clip may help; --resume continues from that checkpoint)",
             s.step + 1, std::isfinite(st.main_loss) && mtp_finite ? "gradient" : "loss",
             st.main_loss, st.mtp_loss.empty() ? kNoValue : st.mtp_loss[0], norm);
  const double lr = s.lr->lr(s.step);
  if (s.zopt)
    s.zopt->step(s.store->params(), s.sync->shard(), float(lr));
  else
    s.opt->step(s.store->params(), s.store->grads(), float(lr));
  const double gamma = cfg.balance ? BiasSpeedSchedule{cfg.gamma}.at(s.step, s.total) : 0.0;
  StepRecord rec;
  for (size_t r = 0; r < st.moe_layer.size(); ++r) {
    const auto& load = st.expert_load[r];
    if (gamma > 0)
      update_bias(s.store->param(bias_name(st.moe_layer[r])), load.data(), int64_t(load.size()),
                  float(gamma));
    rec.max_vio.push_back(max_vio(load.data(), int64_t(load.size())));
    rec.expert_load.emplace_back(load.begin(), load.end());
  }
  const double dt = seconds_since(t0);
  s.step += 1;
  rec.step = s.step;
  rec.loss = st.main_loss;
  if (!st.mtp_loss.empty()) rec.mtp_loss = st.mtp_loss[0];
  rec.lr = lr;
  rec.tokens_per_s = double(B * cfg.seq_len) / dt;
  rec.mfu = s.peak.flops > 0 ? s.flops_per_token * rec.tokens_per_s / s.peak.flops : kNoValue;
  rec.grad_norm = norm;
  double mem = double(state_bytes(s) + int64_t(st.activation_bytes));
  if (s.distributed()) {
    s.world->all_reduce(&mem, 1, DType::F64, dist::ReduceOp::Max);
    rec.comm_wait_s = comm_wait;
    rec.dist = {{"layout", layout_json(s)},
                {"grad_sync",
                 {{"bytes", s.sync->bytes_per_step()},
                  {"requests", s.sync->requests_last_step()},
                  {"overlap", cfg.grad_overlap},
                  {"in_backward_s", s.sync->in_backward_s()},
                  {"exposed_wait_s", comm_wait}}}};
    if (o.ep) {
      const dist::DispatchStats& d = s.dispatch;
      std::vector<int64_t> v = d.rows_to;
      v.resize(size_t(s.ep), 0);
      v.push_back(d.remote_combine_bytes);
      v.push_back(d.tokens);
      v.push_back(d.remote_bytes);
      v.push_back(d.cross_node_bytes);
      double a2a_s = d.seconds;
      s.world->all_reduce(&a2a_s, 1, DType::F64, dist::ReduceOp::Max);
      s.world->all_reduce(v.data(), int64_t(v.size()), DType::I64, dist::ReduceOp::Sum);
      const int64_t cross = v.back(), remote = v[v.size() - 2], tokens = v[v.size() - 3],
                    combine = v[v.size() - 4];
      v.resize(size_t(s.ep));
      rec.dist["dispatch"] = {
          {"rows_to_rank", v},
          {"all_to_all_s", a2a_s},
          {"tokens", tokens},
          {"bytes", remote},
          {"cross_node_bytes", cross},
          {"bytes_per_token", double(remote) / double(B * cfg.seq_len)},
          {"cross_node_bytes_per_token", double(cross) / double(B * cfg.seq_len)},
          {"combine_bytes_per_token", double(combine) / double(B * cfg.seq_len)},
          {"wire", fmt::format("{}/{}", dist::wire_name(d.wire.to_experts),
                               dist::wire_name(d.wire.from_experts))}};
    }
  }
  rec.mem_bytes = mem;
  return rec;
}

}  // namespace dsv3::train
