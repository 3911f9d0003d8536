// `dsv3 grads --model DIR --tokens FILE --out FILE [--mtp-lambda L]`: one forward/backward in
// FP32 on the I32 `tokens` [B, T] of FILE; writes F32 `loss` [1] and `grad.<HF name>` for every
// tensor of the main model (the routing bias: zeros), plus the MTP layer's with --mtp-lambda
// (loss = main CE + L · depth-1 MTP CE, as the reference's train.loss_total). The MTP layer uses
// its own embedding/head copies unless --tie-mtp-embeddings (then their gradients land on the
// main tensors and the copies get zeros).
#include <cstdio>

#include "command.hpp"
#include "io/safetensors.hpp"
#include "options.hpp"
#include "train/model_train.hpp"
#include "train/params.hpp"

namespace {
struct GradsArgs {
  std::string model, tokens, out;
  double mtp_lambda = 0;
  bool tie = false, recompute = false;
  int threads = 0;
};

void run_grads(const GradsArgs& a) {
  using namespace dsv3;
  set_num_threads(cli::cap_threads(a.threads));
  auto tf = io::TensorStore::open_file(a.tokens);
  const io::TensorInfo& t = tf.get("tokens");
  DSV3_CHECK(t.shape.size() == 2, "{}: 'tokens' must be [B, T], got {}", a.tokens, t.shape_str());
  auto tokens = io::read_i32(t);
  const int64_t B = t.shape[0], T = t.shape[1];
  train::ParamStore p = train::ParamStore::load(a.model);
  train::TrainModel m(p.config(), p.layout(), p.params(), p.grads());
  train::TrainOptions o;
  o.mtp_lambda = a.mtp_lambda;
  o.mtp_depth = a.mtp_lambda > 0 ? 1 : 0;
  o.tie_mtp_embeddings = a.tie;
  o.recompute = a.recompute;
  train::StepStats st;
  const float loss = float(m.forward_backward(tokens.data(), B, T, o, &st));
  io::SafetensorsWriter w;
  w.add_f32("loss", {1}, &loss);
  size_t n = 0;
  for (const auto& e : p.entries()) {
    if (e.mtp && a.mtp_lambda <= 0) continue;
    w.add_f32("grad." + e.name, e.shape, p.grads() + e.offset);
    ++n;
  }
  w.write(a.out);
  std::printf("wrote %s: loss %.7f (main %.7f", a.out.c_str(), double(loss), st.main_loss);
  if (!st.mtp_loss.empty()) std::printf(", mtp %.7f", st.mtp_loss[0]);
  std::printf(") and %zu gradients\n", n);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<GradsArgs>();
  auto* sub = app.add_subcommand("grads", "One forward/backward: write the loss and gradients");
  sub->add_option("--model", a->model, "checkpoint directory (HF layout)")->required();
  sub->add_option("--tokens", a->tokens, "safetensors file with I32 tokens [B, T]")->required();
  sub->add_option("--out", a->out, "output safetensors file")->required();
  sub->add_option("--mtp-lambda", a->mtp_lambda, "add L x the depth-1 MTP cross-entropy");
  sub->add_flag("--tie-mtp-embeddings", a->tie,
                "MTP uses the main embedding/head (gradients add up there)");
  sub->add_flag("--recompute", a->recompute, "recompute norms and MLA up-projections");
  dsv3::cli::add_int_option(sub, "--threads", a->threads, 0, 1 << 20,
                            "worker threads (default: all cores)");
  sub->callback([a] { run_grads(*a); });
}
}  // namespace
DSV3_COMMAND(setup);
