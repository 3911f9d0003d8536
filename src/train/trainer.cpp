// Implementation of trainer.hpp: setup (tokenizer, data, model, optimizer or a checkpoint), the
// training loop, evaluation with samples, checkpoints and the end of the run.
#include "train/trainer.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <utility>

#include "backend/cpu/linear.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "model/export.hpp"
#include "model/model.hpp"
#include "serve/generate.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tokenizer/trainer.hpp"
#include "train/balance.hpp"
#include "train/data.hpp"
#include "train/lr_schedule.hpp"
#include "train/model_train.hpp"
#include "train/optimizer.hpp"
#include "train/progress.hpp"
#include "train/report.hpp"

namespace fs = std::filesystem;

namespace dsv3::train {
namespace {

// FP32 GEMM peak of this machine with the current thread count: the best of a few timed
// 512×512×512 oneDNN sgemm calls (~0.3 s).
double measure_fp32_peak() {
  const int64_t n = 512;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  double best = 0;
  const auto t_end = Clock::now() + std::chrono::milliseconds(300);
  for (int i = 0; i < 40 && (i < 3 || Clock::now() < t_end); ++i) {
    auto t0 = Clock::now();
    cpu::gemm_f32(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    best = std::max(best, 2.0 * double(n * n * n) / seconds_since(t0));
  }
  return best;
}

std::string tokenizer_json_hash(const std::string& dir) {
  return hex64(hash_file((fs::path(dir) / "tokenizer.json").string()));
}

// AdamW ranges from the parameter table: decay per params.hpp, the routing bias and (with tied
// MTP embeddings) the unused MTP copies of the embedding and head are not updated.
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

std::vector<std::string> read_documents(const std::vector<std::string>& files, DocSplit split) {
  std::vector<std::string> docs;
  for (const auto& f : files) {
    const std::string text = io::read_file(f);
    for (auto d : split_documents(text, split)) docs.emplace_back(d);
  }
  return docs;
}

void copy_tokenizer_files(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(from) / name;
    if (fs::exists(src)) io::atomic_write((fs::path(to) / name).string(), io::read_file(src));
  }
}

}  // namespace

// Everything built by run(): tokenizer, data, model, optimizer, schedules, writers.
struct TrainerState {
  std::optional<tok::Tokenizer> tk;
  std::string tokenizer_dir;
  Dataset data;
  model::ModelConfig mc;
  std::unique_ptr<ParamStore> store;
  std::unique_ptr<TrainModel> model;
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<BatchSampler> sampler;
  std::unique_ptr<LrSchedule> lr;
  Rng rng;
  int threads = 1;
  int64_t total = 0, step = 0;
  double elapsed_before = 0;  // wall seconds of earlier sessions of this run
  double flops_per_token = 0, peak = 0;
  std::unique_ptr<MetricsWriter> metrics;
  std::unique_ptr<ProgressLine> progress;
  double last_val = kNoValue;
  TrainResult result;
  Clock::time_point t0;
};

Trainer::Trainer(TrainConfig config, RunOptions run)
    : config_(std::move(config)), run_(std::move(run)) {
  config_.validate();
  DSV3_CHECK(!run_.run_dir.empty(), "the run directory (--out) is empty");
  files_ = list_input_files(config_.data);
  if (!config_.tokenizer.empty()) {
    DSV3_CHECK(fs::exists(fs::path(config_.tokenizer) / "tokenizer.json"),
               "tokenizer dir '{}' has no tokenizer.json", config_.tokenizer);
    tok::Tokenizer::load(config_.tokenizer);  // fails now on a bad file
  }
  const bool used = !list_checkpoints(run_.run_dir).empty() ||
                    fs::exists(fs::path(run_.run_dir) / "metrics.jsonl");
  DSV3_CHECK(!used || run_.overwrite,
             "run dir '{}' already holds a run: continue it with --resume {} or start over with "
             "--overwrite (or another --out)",
             run_.run_dir, run_.run_dir);
}

Trainer Trainer::resume(RunOptions run) {
  std::vector<std::string> warnings;
  DSV3_CHECK(fs::is_directory(run.run_dir), "--resume: '{}' is not a directory", run.run_dir);
  auto ck = load_latest_checkpoint(run.run_dir, &warnings);
  DSV3_CHECK(ck, "--resume: no valid checkpoint in '{}'", checkpoints_dir(run.run_dir));
  DSV3_CHECK(ck->meta.contains("train_config") && ck->meta.contains("threads"),
             "{}: meta.json lacks train_config/threads (not written by dsv3 train)",
             checkpoint_path(run.run_dir, ck->step));
  TrainConfig cfg = TrainConfig::from_json(ck->meta["train_config"],
                                           checkpoint_path(run.run_dir, ck->step) + "/meta.json");
  if (run.steps > 0 && run.steps != cfg.steps) {
    warnings.push_back(
        fmt::format("run length changed from {} to {} steps: the LR schedule is "
                    "rescaled, so losses differ from the original run",
                    cfg.steps, run.steps));
    cfg.steps = run.steps;
  }
  cfg.threads = ck->meta["threads"].get<int>();
  if (run.threads > 0 && run.threads != cfg.threads) {
    warnings.push_back(
        fmt::format("threads changed from {} to {}: losses may differ in the last "
                    "bits from the original run",
                    cfg.threads, run.threads));
    cfg.threads = run.threads;
  }
  RunOptions r = run;
  r.overwrite = true;
  Trainer t(std::move(cfg), std::move(r));
  t.resume_from_ = std::move(ck);
  t.warnings_ = std::move(warnings);
  return t;
}

Trainer::~Trainer() = default;
Trainer::Trainer(Trainer&&) noexcept = default;

namespace {

// Trains a BPE tokenizer on the documents of the corpus into dir (validation documents
// included: the tokenizer sees the text, never the held-out losses).
void train_tokenizer(const TrainConfig& cfg, const std::vector<std::string>& files,
                     const std::string& dir, bool quiet) {
  tok::BpeTrainerOptions o;
  o.vocab_size = int32_t(cfg.vocab_size);
  o.progress = !quiet;
  tok::BpeTrainer bpe(o);
  bpe.feed(read_documents(files, doc_split_from_name(cfg.doc_split)));
  tok::save_trained_tokenizer(bpe.train(), dir);
}

TrainOptions step_options(const TrainConfig& cfg, int64_t step, int64_t total) {
  TrainOptions o;
  if (cfg.mtp)
    o.mtp_lambda = MtpLambdaSchedule{cfg.mtp_lambda, cfg.mtp_lambda_late}.at(step, total);
  o.tie_mtp_embeddings = true;
  o.recompute = cfg.recompute;
  o.balance_alpha = cfg.alpha;
  return o;
}

std::string bias_name(int64_t layer) {
  return fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", layer);
}

// Decoder index of every MoE layer in StepStats order: main layers, then the MTP layers.
std::vector<int> moe_layers(const model::ModelConfig& c, bool mtp) {
  std::vector<int> r;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    if (c.is_moe_layer(i)) r.push_back(int(i));
  if (mtp)
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k)
      if (c.is_moe_layer(c.num_hidden_layers + k)) r.push_back(int(c.num_hidden_layers + k));
  return r;
}

// Mean main and MTP loss over the first eval_batches·batch windows of the validation stream
// (unshuffled, so every evaluation sees the same text).
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

void save_state(TrainerState& s, const TrainConfig& cfg, const RunOptions& run, double elapsed) {
  CheckpointData ck;
  ck.step = s.step;
  for (const auto& e : s.store->entries())
    ck.tensors["param." + e.name] = Blob::of(DType::F32, e.shape, s.store->params() + e.offset);
  for (const auto& t : s.opt->state_tensors("optimizer."))
    ck.tensors[t.name] = Blob::of(t.dtype, t.shape, t.data);
  const auto sa = s.sampler->state().to_array();
  ck.tensors["sampler.state"] = Blob::i64({sa.begin(), sa.end()});
  const auto rs = s.rng.state();
  std::vector<int64_t> r(4);
  std::memcpy(r.data(), rs.data(), sizeof rs);
  ck.tensors["rng.state"] = Blob::i64(r);
  TrainConfig c = cfg;
  c.threads = s.threads;
  ck.meta = {{"format", "dsv3-train"},
             {"train_config", c.to_json()},
             {"model_config", s.mc.to_json()},
             {"threads", s.threads},
             {"total_steps", s.total},
             {"tokenizer_hash", tokenizer_json_hash(s.tokenizer_dir)},
             {"elapsed_s", elapsed}};
  save_checkpoint(run.run_dir, ck, cfg.keep_last);
}

const Blob& find_blob(const CheckpointData& ck, const std::string& name) {
  auto it = ck.tensors.find(name);
  DSV3_CHECK(it != ck.tensors.end(), "checkpoint step {}: tensor '{}' is missing", ck.step, name);
  return it->second;
}

void restore_params(ParamStore& store, const CheckpointData& ck) {
  for (const auto& e : store.entries()) {
    const Blob& b = find_blob(ck, "param." + e.name);
    DSV3_CHECK(b.shape == e.shape && b.dtype == DType::F32,
               "checkpoint step {}: tensor 'param.{}' has the wrong shape or dtype", ck.step,
               e.name);
    std::memcpy(store.params() + e.offset, b.bytes.data(), size_t(e.numel) * sizeof(float));
  }
}

void restore_state(TrainerState& s, const CheckpointData& ck) {
  restore_params(*s.store, ck);
  std::vector<StateTensor> st;
  for (const auto& [name, b] : ck.tensors)
    if (name.starts_with("optimizer.")) st.push_back({name, b.dtype, b.shape, b.bytes.data()});
  s.opt->load_state_tensors(st, "optimizer.");
  s.sampler->set_state(SamplerState::from_array(find_blob(ck, "sampler.state").to_i64("sampler")));
  const auto r = find_blob(ck, "rng.state").to_i64("rng");
  DSV3_CHECK(r.size() == 4, "checkpoint step {}: rng.state must hold 4 values", ck.step);
  std::array<uint64_t, 4> rs;
  std::memcpy(rs.data(), r.data(), sizeof rs);
  s.rng.set_state(rs);
  const std::string th = ck.meta.value("tokenizer_hash", "");
  DSV3_CHECK(th == tokenizer_json_hash(s.tokenizer_dir),
             "checkpoint step {}: {}/tokenizer.json changed since the checkpoint was written",
             ck.step, s.tokenizer_dir);
  s.step = ck.step;
  s.elapsed_before = ck.meta.value("elapsed_s", 0.0);
}

StepRecord train_step(TrainerState& s, const TrainConfig& cfg, std::vector<int32_t>& buf) {
  const auto t0 = Clock::now();
  const int64_t B = cfg.batch, W = cfg.seq_len + 1;
  s.sampler->next(buf.data());
  s.store->zero_grad();
  StepStats st;
  s.model->forward_backward(buf.data(), B, W, step_options(cfg, s.step, s.total), &st);
  const float norm =
      clip_grad_norm(s.store->grads(), size_t(s.store->size()), float(cfg.grad_clip));
  const double lr = s.lr->lr(s.step);
  if (std::isfinite(norm))
    s.opt->step(s.store->params(), s.store->grads(), float(lr));
  else
    log_warn(fmt::format("step {}: gradient norm is not finite; update skipped", s.step + 1));
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
  rec.mfu = s.peak > 0 ? s.flops_per_token * rec.tokens_per_s / s.peak : kNoValue;
  rec.grad_norm = norm;
  return rec;
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return kNoValue;
  double t = 0;
  for (double x : v) t += x;
  return t / double(v.size());
}

}  // namespace

TrainResult Trainer::run() {
  DSV3_CHECK(!s_, "Trainer::run called twice");
  s_ = std::make_unique<TrainerState>();
  TrainerState& s = *s_;
  const auto t_start = Clock::now();
  const bool resuming = resume_from_.has_value();
  const std::string& rd = run_.run_dir;
  s.threads = config_.threads > 0 ? config_.threads : num_threads();
  set_num_threads(s.threads);
  for (const auto& w : warnings_) log_warn(w);

  fs::create_directories(rd);
  if (!resuming && run_.overwrite)
    for (const char* p :
         {"checkpoints", "final", "metrics.jsonl", "report.html", "loss.svg", ".sample-model"})
      fs::remove_all(fs::path(rd) / p);

  // Tokenizer: trained on the corpus, or copied, into RUN_DIR/tokenizer (a run dir is
  // self-contained; resume reads it back).
  s.tokenizer_dir = (fs::path(rd) / "tokenizer").string();
  if (!resuming) {
    if (config_.tokenizer.empty()) {
      if (!run_.quiet)
        log_info(fmt::format("training a {}-token BPE tokenizer", config_.vocab_size));
      train_tokenizer(config_, files_, s.tokenizer_dir, run_.quiet);
    } else {
      copy_tokenizer_files(config_.tokenizer, s.tokenizer_dir);
    }
  }
  DSV3_CHECK(fs::exists(fs::path(s.tokenizer_dir) / "tokenizer.json"), "{}: no tokenizer.json",
             s.tokenizer_dir);
  s.tk = tok::Tokenizer::load(s.tokenizer_dir);

  // Data: tokenized once into RUN_DIR/cache, validation documents held out.
  DataOptions d;
  d.inputs = config_.data;
  d.cache_dir = (fs::path(rd) / "cache").string();
  d.tokenizer_id = tokenizer_json_hash(s.tokenizer_dir);
  d.vocab_size = s.tk->vocab_size();
  d.bos_id = s.tk->bos_id().value_or(-1);
  d.eos_id = s.tk->eos_id().value_or(-1);
  d.split = doc_split_from_name(config_.doc_split);
  d.val_fraction = config_.val_fraction;
  d.min_val_tokens = config_.seq_len + 1;
  d.seed = config_.seed;
  d.progress = !run_.quiet;
  s.data = load_dataset(d, [&tk = *s.tk](std::string_view t) { return tk.encode(t, false); });
  const int64_t W = config_.seq_len + 1;
  DSV3_CHECK(int64_t(s.data.train.tokens.size()) >= W && int64_t(s.data.val.tokens.size()) >= W,
             "the corpus is too small: {} training and {} validation tokens, each split needs at "
             "least seq_len + 1 = {}",
             s.data.train.tokens.size(), s.data.val.tokens.size(), W);

  // Model, optimizer, schedules, data position.
  s.mc = config_.model_config(s.tk->vocab_size());
  s.store = std::make_unique<ParamStore>(s.mc);
  s.store->init_random(config_.seed);
  s.model =
      std::make_unique<TrainModel>(s.mc, s.store->layout(), s.store->params(), s.store->grads());
  s.opt = std::make_unique<AdamW>(s.store->size(), config_.adamw_config(),
                                  adamw_ranges(s.store->layout(), true));
  s.sampler = std::make_unique<BatchSampler>(std::span<const int32_t>(s.data.train.tokens),
                                             config_.batch, config_.seq_len, config_.seed);
  s.total = config_.steps;
  s.lr = std::make_unique<LrSchedule>(config_.lr_config(), s.total);
  s.rng = Rng(config_.seed ^ 0x5a4d504c45ull);
  if (resuming) restore_state(s, *resume_from_);
  s.metrics = std::make_unique<MetricsWriter>((fs::path(rd) / "metrics.jsonl").string(),
                                              resuming ? s.step : -1);
  s.flops_per_token = train_flops_per_token(s.mc, config_.seq_len, config_.mtp);
  s.peak = measure_fp32_peak();
  if (!run_.quiet)
    log_info(fmt::format(
        "dsv3 train: {} parameters, vocab {}, {} train / {} val tokens ({} docs), {} threads, "
        "FP32 GEMM peak {:.1f} GFLOP/s, {:.1f} MFLOP/token; {} at step {}/{} -> {}",
        s.store->size(), s.mc.vocab_size, s.data.train.tokens.size(), s.data.val.tokens.size(),
        s.data.num_docs, s.threads, s.peak / 1e9, s.flops_per_token / 1e6,
        resuming ? "resuming" : "starting", s.step, s.total, rd));

  const std::vector<int> layers = moe_layers(s.mc, config_.mtp);
  if (!resuming) {
    RunRecord rr;
    rr.name = run_.name;
    rr.moe_layers = layers;
    rr.n_routed_experts = int(s.mc.n_routed_experts);
    rr.total_steps = s.total;
    rr.extra = {{"train_config", config_.to_json()},
                {"model_config", s.mc.to_json()},
                {"threads", s.threads},
                {"fp32_peak_flops", s.peak},
                {"train_flops_per_token", s.flops_per_token}};
    s.metrics->write(rr);
    EvalRecord e0 = evaluate(s, config_);
    s.last_val = e0.val_loss;
    s.metrics->write(e0);
  }
  if (!run_.quiet)
    s.progress = std::make_unique<ProgressLine>(s.total, s.step, config_.progress_every);
  auto say = [&](const std::string& m) {
    if (s.progress) s.progress->message(m);
  };

  std::vector<int32_t> buf(size_t(config_.batch * W));
  const auto t_loop = Clock::now();
  auto elapsed = [&] { return s.elapsed_before + seconds_since(t_loop); };
  while (s.step < s.total) {
    StepRecord rec = train_step(s, config_, buf);
    rec.time_s = elapsed();
    s.metrics->write(rec);
    const bool last = s.step == s.total;
    const int64_t sp = config_.sample_period();
    const bool do_eval = last || (config_.eval_every > 0 && s.step % config_.eval_every == 0);
    if (do_eval) {
      EvalRecord e = evaluate(s, config_);
      s.last_val = e.val_loss;
      s.metrics->write(e);
      say(fmt::format("step {}: val loss {:.4f} (ppl {:.1f})", s.step, e.val_loss, e.ppl));
      s.result.val_loss = e.val_loss;
      s.result.val_ppl = e.ppl;
    }
    if (last || (sp > 0 && s.step % sp == 0)) {
      s.result.samples = make_samples(s, config_);
      for (const auto& smp : s.result.samples) {
        s.metrics->write(smp);
        say(fmt::format("  sample: {}", smp.text));
      }
    }
    if (s.progress) {
      ProgressInfo p;
      p.step = s.step;
      p.total_steps = s.total;
      p.loss = rec.loss;
      p.mtp_loss = rec.mtp_loss;
      p.val_loss = s.last_val;
      p.lr = rec.lr;
      p.tokens_per_s = rec.tokens_per_s;
      p.mfu = rec.mfu;
      p.max_vio = mean(rec.max_vio);
      s.progress->update(p);
    }
    if (last || (config_.checkpoint_every > 0 && s.step % config_.checkpoint_every == 0))
      save_state(s, config_, run_, elapsed());
    if (run_.stop_after >= 0 && s.step >= run_.stop_after && !last) {
      s.result.step = s.step;
      s.result.wall_s = seconds_since(t_start);
      return s.result;
    }
  }
  if (s.progress) s.progress->finish();

  // The end: HF export with the tokenizer, report.
  s.result.final_dir = (fs::path(rd) / "final").string();
  export_hf(*s.store, true, s.result.final_dir, config_.export_type(), s.tokenizer_dir);
  try {
    write_report(rd);
  } catch (const Error& e) {
    log_warn(fmt::format("report not written: {}", e.what()));
  }
  s.result.step = s.step;
  s.result.finished = true;
  s.result.wall_s = seconds_since(t_start);
  return s.result;
}

void export_hf(const ParamStore& store, bool tie_mtp, const std::string& dir, DType dtype,
               const std::string& tokenizer_dir) {
  const ParamLayout& layout = store.layout();
  model::ExportOptions o;
  o.dtype = dtype;
  model::save_hf_checkpoint(
      dir, store.config(),
      [&](const model::ParamSpec& spec, float* dst) {
        std::string name = spec.name;
        if (tie_mtp && layout.get(name).mtp) {
          if (name.ends_with(".embed_tokens.weight")) name = "model.embed_tokens.weight";
          if (name.ends_with(".shared_head.head.weight")) name = "lm_head.weight";
        }
        const ParamEntry& e = layout.get(name);
        std::copy_n(store.params() + e.offset, e.numel, dst);
      },
      o);
  if (!tokenizer_dir.empty()) copy_tokenizer_files(tokenizer_dir, dir);
}

ParamStore params_from_checkpoint(const CheckpointData& ck) {
  DSV3_CHECK(ck.meta.contains("model_config"),
             "checkpoint step {}: meta.json has no model_config (not written by dsv3 train)",
             ck.step);
  ParamStore store(model::parse_config(ck.meta["model_config"].dump(),
                                       fmt::format("checkpoint step {} meta.json", ck.step)));
  restore_params(store, ck);
  return store;
}

int64_t export_checkpoint(const std::string& run_dir, int64_t step, const std::string& out,
                          DType dtype) {
  std::optional<CheckpointData> ck;
  if (step < 0) {
    ck = load_latest_checkpoint(run_dir);
    DSV3_CHECK(ck, "no valid checkpoint in '{}'", checkpoints_dir(run_dir));
  } else {
    const std::string p = checkpoint_path(run_dir, step);
    DSV3_CHECK(fs::is_directory(p), "no checkpoint of step {}: '{}' does not exist", step, p);
    ck = load_checkpoint(p);
  }
  export_hf(params_from_checkpoint(*ck), true, out, dtype,
            (fs::path(run_dir) / "tokenizer").string());
  return ck->step;
}

EvalResult evaluate_model_dir(const std::string& model_dir, const std::vector<std::string>& inputs,
                              int64_t seq_len, int64_t batch, int64_t max_sequences) {
  DSV3_CHECK(seq_len >= 1 && batch >= 1, "eval: seq_len {} and batch {} must be positive", seq_len,
             batch);
  const auto files = list_input_files(inputs);
  DSV3_CHECK(fs::exists(fs::path(model_dir) / "tokenizer.json"),
             "eval: model dir '{}' has no tokenizer.json", model_dir);
  const auto tk = tok::Tokenizer::load(model_dir);
  // The inference model on the checkpoint as stored (FP32 arithmetic): no gradient arena.
  model::LoadOptions lo;
  lo.load_mtp = false;
  lo.residency = io::Residency::Map;
  auto m = model::Model::load(model_dir, lo);
  const model::ModelConfig& mc = m->config();
  const int64_t T = std::min(seq_len, mc.max_position_embeddings - 1);
  std::vector<int32_t> stream;
  const auto docs = read_documents(files, DocSplit::Auto);
  const auto enc = tk.encode_batch(docs, false);
  for (const auto& ids : enc) {
    if (tk.bos_id()) stream.push_back(*tk.bos_id());
    stream.insert(stream.end(), ids.begin(), ids.end());
    if (tk.eos_id()) stream.push_back(*tk.eos_id());
  }
  for (int32_t id : stream)
    DSV3_CHECK(id >= 0 && id < mc.vocab_size,
               "eval: token {} of the tokenizer is outside the model's vocabulary [0, {})", id,
               mc.vocab_size);
  DSV3_CHECK(stream.size() >= 2, "eval: the data holds fewer than 2 tokens");
  // Windows of W = T + 1 tokens; a stream shorter than one window is one shorter window.
  const int64_t W = std::min<int64_t>(T + 1, int64_t(stream.size()));
  int64_t nseq = (int64_t(stream.size()) - 1) / (W - 1);
  if (max_sequences > 0) nseq = std::min(nseq, max_sequences);
  model::KVCache cache(mc, std::min(batch, nseq), W, false);
  double total = 0;
  std::vector<int32_t> buf;
  for (int64_t b0 = 0; b0 < nseq; b0 += batch) {
    const int64_t B = std::min(batch, nseq - b0);
    buf.resize(size_t(B * W));
    for (int64_t i = 0; i < B; ++i)
      std::copy_n(stream.begin() + (b0 + i) * (W - 1), W, buf.begin() + i * W);
    total += m->cross_entropy(buf.data(), B, W, cache) / double(W - 1);
  }
  EvalResult r;
  r.sequences = nseq;
  r.tokens = nseq * (W - 1);
  r.loss = total / double(nseq);
  r.ppl = std::exp(r.loss);
  return r;
}

}  // namespace dsv3::train
