// Evaluation during training (trainer_state.hpp): the validation loss on a fixed stretch of the
// held-out stream, and text samples from the configured prompts.
#include <cmath>

#include "core/error.hpp"
#include "model/model.hpp"
#include "serve/generate.hpp"
#include "train/trainer_state.hpp"

namespace dsv3::train {

EvalRecord evaluate(TrainerState& s, const TrainConfig& cfg) {
  const int64_t T = cfg.seq_len, W = T + 1;
  const auto& v = s.data.val.tokens;
  int64_t nseq = std::min<int64_t>(cfg.eval_batches * cfg.batch, (int64_t(v.size()) - 1) / T);
  // Distributed: every chunk of the stretch split evenly over the ranks (a whole number of
  // sequences each; the batch divides by the ranks, so only the stretch's end is trimmed).
  const int64_t P = s.ranks;
  nseq -= nseq % P;
  DSV3_CHECK(nseq >= P,
             "the validation split holds {} windows of seq_len + 1 tokens, fewer than "
             "the {} ranks: use a larger val_fraction",
             nseq, P);
  TrainOptions o = step_options(cfg, s.step, s.total);
  o.balance_alpha = 0;
  parallel_options(s, o);
  double main = 0, mtp = 0;
  bool has_mtp = false;
  std::vector<int32_t> buf;
  for (int64_t b0 = 0; b0 < nseq; b0 += cfg.batch) {
    const int64_t B = std::min(cfg.batch, nseq - b0) / P, first = b0 + s.rank * B;
    buf.resize(size_t(B * W));
    for (int64_t i = 0; i < B; ++i)
      std::copy_n(v.begin() + (first + i) * T, W, buf.begin() + i * W);
    StepStats st;
    s.model->forward_loss(buf.data(), B, W, o, &st);
    main += st.main_loss * double(B);
    if (!st.mtp_loss.empty()) {
      has_mtp = true;
      mtp += st.mtp_loss[0] * double(B);
    }
  }
  if (s.distributed()) {
    double sums[2] = {main, mtp};
    s.world->all_reduce(sums, 2, DType::F64, dist::ReduceOp::Sum);
    main = sums[0];
    mtp = sums[1];
  }
  EvalRecord r;
  r.step = s.step;
  r.val_loss = main / double(nseq);
  r.ppl = std::exp(r.val_loss);
  if (has_mtp) r.val_mtp_loss = mtp / double(nseq);
  return r;
}

// Samples from the fixed prompts with the inference engine, run on the training arena itself
// (model::Model::view: no copy, no export).
std::vector<SampleRecord> make_samples(TrainerState& s, const TrainConfig& cfg) {
  std::vector<SampleRecord> out;
  if (cfg.sample_prompts.empty() || cfg.sample_tokens == 0) return out;
  // Distributed: rank 0 samples from the whole model, gathered from the expert shards.
  const std::unique_ptr<ParamStore> full = gather_full_store(s);
  if (!s.lead()) return out;
  const ParamStore& store = full ? *full : *s.store;
  auto m = model::Model::view(s.mc, store.layout(), store.params(), false);
  for (const auto& prompt : cfg.sample_prompts) {
    const uint64_t seed = s.rng.next_u64();
    auto ids = s.tk->encode(prompt, true);
    const int64_t room = s.mc.max_position_embeddings - int64_t(ids.size());
    if (ids.empty() || room <= 0) continue;
    serve::GenerateOptions go;
    go.max_new_tokens = std::min(cfg.sample_tokens, room);
    go.sampling = {float(cfg.sample_temperature), cfg.sample_top_k, 1.0f, seed};
    auto gen = serve::generate(*m, {ids}, go, [](int64_t, int32_t) {});
    out.push_back({s.step, prompt, prompt + s.tk->decode(gen[0], true)});
  }
  return out;
}

}  // namespace dsv3::train
