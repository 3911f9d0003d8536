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
  const int64_t nseq = std::min<int64_t>(cfg.eval_batches * cfg.batch, (int64_t(v.size()) - 1) / T);
  TrainOptions o = step_options(cfg, s.step, s.total);
  o.balance_alpha = 0;
  double main = 0, mtp = 0;
  bool has_mtp = false;
  std::vector<int32_t> buf;
  for (int64_t b0 = 0; b0 < nseq; b0 += cfg.batch) {
    const int64_t B = std::min(cfg.batch, nseq - b0);
    buf.resize(size_t(B * W));
    for (int64_t i = 0; i < B; ++i) std::copy_n(v.begin() + (b0 + i) * T, W, buf.begin() + i * W);
    StepStats st;
    s.model->forward_loss(buf.data(), B, W, o, &st);
    main += st.main_loss * double(B);
    if (!st.mtp_loss.empty()) {
      has_mtp = true;
      mtp += st.mtp_loss[0] * double(B);
    }
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
  auto m = model::Model::view(s.mc, s.store->layout(), s.store->params(), false);
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
