// `dsv3 logits --model DIR --tokens FILE --out FILE [--attn naive|absorbed] [--mtp]`: the porting
// tool. FILE holds an I32 `tokens` [B, T]; the output holds F32 `logits` [B, T, vocab] (and
// `mtp_logits` [B, T-1, vocab] with --mtp: position i predicts token i+2 from h_i and token i+1).
#include <cstdio>

#include "command.hpp"
#include "io/safetensors.hpp"
#include "model/model.hpp"
#include "options.hpp"

namespace {
struct LogitsArgs {
  std::string model, tokens, out, attn = "absorbed";
  bool mtp = false;
  dsv3::cli::RunFlags run;
};

void run_logits(const LogitsArgs& a) {
  using namespace dsv3;
  a.run.apply();
  auto tf = io::TensorStore::open_file(a.tokens);
  const io::TensorInfo& t = tf.get("tokens");
  DSV3_CHECK(t.shape.size() == 2, "{}: 'tokens' must be [B, T], got {}", a.tokens, t.shape_str());
  auto tokens = io::read_i32(t);
  const int64_t B = t.shape[0], T = t.shape[1];
  model::LoadOptions lo;
  lo.compute = a.run.compute();
  lo.load_mtp = a.mtp;
  auto m = model::Model::load(a.model, lo);
  const auto& c = m->config();
  DSV3_CHECK(B > 0 && T > 0, "{}: empty tokens tensor", a.tokens);
  DSV3_CHECK(T <= c.max_position_embeddings, "{}: {} tokens exceed max_position_embeddings {}",
             a.tokens, T, c.max_position_embeddings);
  model::ForwardOptions fo;
  DSV3_CHECK(a.attn == "naive" || a.attn == "absorbed",
             "--attn must be naive or absorbed, got '{}'", a.attn);
  fo.attn = a.attn == "naive" ? model::AttnImpl::Naive : model::AttnImpl::Absorbed;
  model::KVCache cache(c, B, T, a.mtp);
  std::vector<float> logits(size_t(B * T * c.vocab_size));
  std::vector<float> hidden;
  if (a.mtp) {
    DSV3_CHECK(m->has_mtp(), "{}: --mtp given but the checkpoint has no MTP module", a.model);
    DSV3_CHECK(T >= 2, "--mtp needs at least 2 tokens per sequence");
    hidden.resize(size_t(B * T * c.hidden_size));
    fo.final_hidden = hidden.data();
  }
  m->forward(tokens.data(), B, T, 0, cache, logits.data(), fo);
  io::SafetensorsWriter w;
  w.add_f32("logits", {B, T, c.vocab_size}, logits.data());
  if (a.mtp) {
    const int64_t T1 = T - 1, D = c.hidden_size;
    std::vector<float> h(size_t(B * T1 * D)), ml(size_t(B * T1 * c.vocab_size));
    std::vector<int32_t> next(size_t(B * T1));
    for (int64_t b = 0; b < B; ++b) {
      std::copy(hidden.begin() + b * T * D, hidden.begin() + (b * T + T1) * D,
                h.begin() + b * T1 * D);
      std::copy(tokens.begin() + b * T + 1, tokens.begin() + (b + 1) * T, next.begin() + b * T1);
    }
    model::ForwardOptions mo;
    mo.attn = fo.attn;
    m->mtp_forward(h.data(), next.data(), B, T1, 0, cache, ml.data(), mo);
    w.add_f32("mtp_logits", {B, T1, c.vocab_size}, ml.data());
  }
  w.write(a.out);
  std::printf("wrote %s: logits [%lld, %lld, %lld]%s\n", a.out.c_str(), (long long)B, (long long)T,
              (long long)c.vocab_size, a.mtp ? " and mtp_logits" : "");
}

void setup(CLI::App& app) {
  auto a = std::make_shared<LogitsArgs>();
  auto* sub = app.add_subcommand("logits", "Write the logits of every position (safetensors)");
  sub->add_option("--model", a->model, "checkpoint directory (HF layout)")->required();
  sub->add_option("--tokens", a->tokens, "safetensors file with I32 tokens [B, T]")->required();
  sub->add_option("--out", a->out, "output safetensors file")->required();
  sub->add_option("--attn", a->attn, "attention path: naive or absorbed")->capture_default_str();
  sub->add_flag("--mtp", a->mtp, "also write mtp_logits [B, T-1, vocab]");
  a->run.add(sub, "f32");
  sub->callback([a] { run_logits(*a); });
}
}  // namespace
DSV3_COMMAND(setup);
