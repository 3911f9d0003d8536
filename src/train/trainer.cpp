// Implementation of trainer.hpp: a fresh run or a resumed one, and Trainer::run as its phases —
// run dir, tokenizer, data, model and optimizer (or a checkpoint), the run record, the loop with
// evaluation, samples and checkpoints, and the end of the run (export, report). The step, the
// evaluation and the checkpoint form of the state are in trainer_step.cpp, trainer_eval.cpp and
// trainer_state.cpp (trainer_state.hpp).
#include "train/trainer.hpp"

#include <filesystem>
#include <utility>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/parallel.hpp"
#include "io/file.hpp"
#include "tokenizer/trainer.hpp"
#include "train/export.hpp"
#include "train/report.hpp"
#include "train/run_lock.hpp"
#include "train/trainer_state.hpp"

namespace fs = std::filesystem;

namespace dsv3::train {

std::string run_record_path(const std::string& run_dir) {
  return (fs::path(run_dir) / "run.json").string();
}

Trainer::Trainer(TrainConfig config, RunOptions run)
    : config_(std::move(config)), run_(std::move(run)) {
  config_.validate();
  config_.validate_layout(run_.comm ? run_.comm->size() : 1);
  DSV3_CHECK(!run_.run_dir.empty(), "the run directory (--out) is empty");
  files_ = list_input_files(config_.data);
  if (!config_.tokenizer.empty()) {
    DSV3_CHECK(fs::exists(fs::path(config_.tokenizer) / "tokenizer.json"),
               "tokenizer dir '{}' has no tokenizer.json", config_.tokenizer);
    tok::Tokenizer::load(config_.tokenizer);  // fails now on a bad file
  }
  const bool used = !list_checkpoints(run_.run_dir).empty() ||
                    fs::exists(fs::path(run_.run_dir) / "metrics.jsonl") ||
                    fs::exists(run_record_path(run_.run_dir));
  DSV3_CHECK(!used || run_.overwrite,
             "run dir '{}' already holds a run: continue it with --resume {} (from its last "
             "checkpoint, or from the start when it has none) or start over with --overwrite (or "
             "another --out)",
             run_.run_dir, run_.run_dir);
  // No rank writes before every rank has checked (a rank that failed ends the job).
  if (run_.comm && run_.comm->size() > 1) run_.comm->barrier();
}

namespace {

// The recorded options a resume continues with: the newest valid checkpoint's meta.json, or
// RUN_DIR/run.json when the run has no checkpoint yet (it then starts over from step 0).
nlohmann::json resume_record(const RunOptions& run, const std::optional<CheckpointData>& ck,
                             std::string* where, std::vector<std::string>* warnings) {
  if (ck) {
    *where = checkpoint_path(run.run_dir, ck->step) + "/meta.json";
    return ck->meta;
  }
  DSV3_CHECK(list_checkpoints(run.run_dir).empty(),
             "--resume: no valid checkpoint in '{}' (every one is corrupt): start the run over "
             "with dsv3 train --overwrite --out {}",
             checkpoints_dir(run.run_dir), run.run_dir);
  *where = run_record_path(run.run_dir);
  DSV3_CHECK(fs::exists(*where),
             "--resume: '{}' holds no checkpoint and no run.json, so no run to continue: start "
             "one with dsv3 train --out {} (with --overwrite to replace what is there)",
             run.run_dir, run.run_dir);
  nlohmann::json j = nlohmann::json::parse(io::read_file(*where), nullptr, false);
  DSV3_CHECK(!j.is_discarded() && j.is_object(), "{} is not a JSON object", *where);
  warnings->push_back(fmt::format(
      "{} has no checkpoint yet: the run starts over from step 0 with the options of {}",
      run.run_dir, *where));
  return j;
}

}  // namespace

Trainer Trainer::resume(RunOptions run) {
  std::vector<std::string> warnings;
  DSV3_CHECK(fs::is_directory(run.run_dir), "--resume: '{}' is not a directory", run.run_dir);
  const int world = run.comm ? run.comm->size() : 1;
  std::unique_ptr<RunDirLock> lock;
  if (!run.comm || run.comm->rank() == 0) lock = std::make_unique<RunDirLock>(run.run_dir);
  // A checkpoint sharded over another number of ranks (or none) cannot be resumed here.
  const std::vector<int64_t> steps = list_checkpoints(run.run_dir);
  if (!steps.empty()) {
    const int ck_world = sharded_checkpoint_world(checkpoint_path(run.run_dir, steps.back()));
    DSV3_CHECK(std::max(ck_world, 1) == world,
               "--resume: the newest checkpoint of '{}' was written by {}; this job has {} "
               "rank(s): resume with {}",
               run.run_dir,
               ck_world > 0 ? fmt::format("{} ranks", ck_world) : std::string("one process"), world,
               ck_world > 0 ? fmt::format("mpirun -np {} dsv3 train --resume", ck_world)
                            : std::string("dsv3 train --resume (no mpirun)"));
  }
  auto ck = world > 1 ? load_latest_checkpoint_sharded(run.run_dir, *run.comm, &warnings)
                      : load_latest_checkpoint(run.run_dir, &warnings);
  std::string where;
  const nlohmann::json rec = resume_record(run, ck, &where, &warnings);
  DSV3_CHECK(
      rec.contains("train_config") && rec.contains("threads") && rec["threads"].is_number_integer(),
      "{}: lacks train_config/threads (not written by dsv3 train)", where);
  TrainConfig cfg = TrainConfig::from_json(rec["train_config"], where);
  if (ck)
    checkpoint_model_config(*ck);  // the model the checkpoint holds is the one its options say
  if (run.steps > 0 && run.steps != cfg.steps) {
    warnings.push_back(
        fmt::format("run length changed from {} to {} steps: the LR schedule is "
                    "rescaled, so losses differ from the original run",
                    cfg.steps, run.steps));
    cfg.steps = run.steps;
  }
  cfg.threads = rec["threads"].get<int>();
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
  t.lock_ = std::move(lock);
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

// A fresh run clears what an earlier run left, then records its options in RUN_DIR/run.json
// (with the thread count). An earlier run's different run.json goes first, so a kill midway
// leaves either that run whole or no run at all, never its options beside this run's files.
void prepare_run_dir(const TrainerState& s, const TrainConfig& cfg, const RunOptions& run,
                     bool resuming) {
  const std::string& rd = run.run_dir;
  TrainConfig c = cfg;
  c.threads = s.threads;
  const nlohmann::json rec = {
      {"format", "dsv3-train-run"}, {"train_config", c.to_json()}, {"threads", s.threads}};
  const std::string text = rec.dump(2) + "\n", path = run_record_path(rd);
  if (fs::exists(path) && io::read_file(path) != text) fs::remove(path);
  if (!resuming && run.overwrite)
    for (const char* p :
         {"checkpoints", "final", "metrics.jsonl", "report.html", "loss.svg", ".sample-model"})
      fs::remove_all(fs::path(rd) / p);
  io::atomic_write(path, text);
}

// The tokenizer is trained on the corpus, or copied, into RUN_DIR/tokenizer (a run dir is
// self-contained; resume reads it back).
void setup_tokenizer(TrainerState& s, const TrainConfig& cfg, const RunOptions& run,
                     const std::vector<std::string>& files, bool resuming) {
  const std::string& rd = run.run_dir;
  s.tokenizer_dir = (fs::path(rd) / "tokenizer").string();
  if (!resuming) {
    if (cfg.tokenizer.empty()) {
      if (!run.quiet) log_info(fmt::format("training a {}-token BPE tokenizer", cfg.vocab_size));
      train_tokenizer(cfg, files, s.tokenizer_dir, run.quiet);
    } else {
      copy_tokenizer_files(cfg.tokenizer, s.tokenizer_dir);
    }
  }
  DSV3_CHECK(fs::exists(fs::path(s.tokenizer_dir) / "tokenizer.json"), "{}: no tokenizer.json",
             s.tokenizer_dir);
  s.tk = tok::Tokenizer::load(s.tokenizer_dir);
}

// Data: tokenized once into RUN_DIR/cache, validation documents held out.
void setup_data(TrainerState& s, const TrainConfig& cfg, const RunOptions& run) {
  DataOptions d;
  d.inputs = cfg.data;
  d.cache_dir = (fs::path(run.run_dir) / "cache").string();
  d.tokenizer_id = tokenizer_json_hash(s.tokenizer_dir);
  d.vocab_size = s.tk->vocab_size();
  d.bos_id = s.tk->bos_id().value_or(-1);
  d.eos_id = s.tk->eos_id().value_or(-1);
  d.split = doc_split_from_name(cfg.doc_split);
  d.val_fraction = cfg.val_fraction;
  d.min_val_tokens = cfg.seq_len + 1;
  d.seed = cfg.seed;
  d.progress = !run.quiet;
  s.data = load_dataset(d, [&tk = *s.tk](std::string_view t) { return tk.encode(t, false); });
  const int64_t W = cfg.seq_len + 1;
  DSV3_CHECK(int64_t(s.data.train.tokens.size()) >= W && int64_t(s.data.val.tokens.size()) >= W,
             "the corpus is too small: {} training and {} validation tokens, each split needs at "
             "least seq_len + 1 = {}",
             s.data.train.tokens.size(), s.data.val.tokens.size(), W);
}

// Model, optimizer, schedules, data position: seeded, then overwritten by the checkpoint when
// resuming.
void setup_model(TrainerState& s, const TrainConfig& cfg, const RunOptions& run,
                 const CheckpointData* resume_from) {
  // Resuming, the checkpoint's model_config is the model (checked against its train_config by
  // checkpoint_model_config); the tokenizer must still fit it.
  s.mc = resume_from ? checkpoint_model_config(*resume_from) : cfg.model_config(s.tk->vocab_size());
  DSV3_CHECK(s.mc.vocab_size == s.tk->vocab_size(),
             "{}/tokenizer has {} tokens but the checkpoint's model has a vocabulary of {}",
             run.run_dir, s.tk->vocab_size(), s.mc.vocab_size);
  // Distributed: this rank's arena (the replicated parameters and its routed experts; each tensor
  // is seeded by its name, so every rank's init equals one process's).
  s.store = std::make_unique<ParamStore>(s.mc, s.shard);
  s.store->init_random(cfg.seed);
  setup_parallel_model(s, cfg);
  s.model =
      std::make_unique<TrainModel>(s.mc, s.store->layout(), s.store->params(), s.store->grads());
  if (!s.distributed())
    s.opt = std::make_unique<AdamW>(s.store->size(), cfg.adamw_config(),
                                    adamw_ranges(s.store->layout(), true));
  s.sampler = std::make_unique<BatchSampler>(std::span<const int32_t>(s.data.train.tokens),
                                             cfg.batch, cfg.seq_len, cfg.seed);
  s.total = cfg.steps;
  s.lr = std::make_unique<LrSchedule>(cfg.lr_config(), s.total);
  s.rng = Rng(cfg.seed ^ 0x5a4d504c45ull);
  if (resume_from) restore_state(s, *resume_from);
  if (s.lead())
    s.metrics = std::make_unique<MetricsWriter>((fs::path(run.run_dir) / "metrics.jsonl").string(),
                                                resume_from ? s.step : -1);
  s.flops_per_token = train_flops_per_token(s.mc, cfg.seq_len, cfg.mtp);
  s.peak = measure_fp32_fma_peak(s.threads);
  if (!run.quiet && s.distributed())
    log_info(
        fmt::format("dsv3 train: {} ranks (dp {} x ep {}{}), {} per rank: {:.1f} MiB of "
                    "parameters, gradients and optimizer state",
                    s.ranks, s.dp, s.ep,
                    s.node_limit.active() ? fmt::format(", tokens on at most {} of {} nodes",
                                                        s.node_limit.max_nodes, s.node_limit.nodes)
                                          : std::string(),
                    local_rows(s, cfg.batch).second - local_rows(s, cfg.batch).first,
                    double(state_bytes(s)) / (1 << 20)));
  if (!run.quiet)
    log_info(fmt::format(
        "dsv3 train: {} parameters, vocab {}, {} train / {} val tokens ({} docs), {} threads, "
        "FP32 FMA peak {:.1f} GFLOP/s (MFU denominator), {:.1f} MFLOP/token; {} at step {}/{} "
        "-> {}",
        s.store->size(), s.mc.vocab_size, s.data.train.tokens.size(), s.data.val.tokens.size(),
        s.data.num_docs, s.threads, s.peak.flops / 1e9, s.flops_per_token / 1e6,
        resume_from ? "resuming" : "starting", s.step, s.total, run.run_dir));
}

// A fresh run's first records: the run record (configs, the MFU peak) and the step-0 evaluation.
void begin_metrics(TrainerState& s, const TrainConfig& cfg, const RunOptions& run) {
  RunRecord rr;
  rr.name = run.name;
  rr.moe_layers = moe_layers(s.mc, cfg.mtp);
  rr.n_routed_experts = int(s.mc.n_routed_experts);
  rr.total_steps = s.total;
  rr.extra = {{"train_config", cfg.to_json()},  {"model_config", s.mc.to_json()},
              {"threads", s.threads},           {"mfu_peak", s.peak.name},
              {"mfu_peak_flops", s.peak.flops}, {"train_flops_per_token", s.flops_per_token}};
  if (s.distributed()) rr.extra["layout"] = layout_json(s);
  if (s.metrics) s.metrics->write(rr);
  EvalRecord e0 = evaluate(s, cfg);
  s.last_val = e0.val_loss;
  if (s.metrics) s.metrics->write(e0);
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return kNoValue;
  double t = 0;
  for (double x : v) t += x;
  return t / double(v.size());
}

void show_progress(TrainerState& s, const StepRecord& rec) {
  if (!s.progress) return;
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

// What follows a step on its schedule: evaluation, samples, progress, a checkpoint.
void after_step(TrainerState& s, const TrainConfig& cfg, const RunOptions& run,
                const StepRecord& rec, double elapsed) {
  auto say = [&](const std::string& m) {
    if (s.progress) s.progress->message(m);
  };
  const bool last = s.step == s.total;
  if (last || (cfg.eval_every > 0 && s.step % cfg.eval_every == 0)) {
    EvalRecord e = evaluate(s, cfg);
    s.last_val = e.val_loss;
    if (s.metrics) s.metrics->write(e);
    say(fmt::format("step {}: val loss {:.4f} (ppl {:.1f})", s.step, e.val_loss, e.ppl));
    s.result.val_loss = e.val_loss;
    s.result.val_ppl = e.ppl;
  }
  const int64_t sp = cfg.sample_period();
  if (last || (sp > 0 && s.step % sp == 0)) {
    s.result.samples = make_samples(s, cfg);
    for (const auto& smp : s.result.samples) {
      if (s.metrics) s.metrics->write(smp);
      say(fmt::format("  sample: {}", smp.text));
    }
  }
  show_progress(s, rec);
  if (last || (cfg.checkpoint_every > 0 && s.step % cfg.checkpoint_every == 0))
    save_state(s, cfg, run, elapsed);
}

// The end: HF export with the tokenizer, report.
void finish_run(TrainerState& s, const TrainConfig& cfg, const RunOptions& run) {
  if (s.progress) s.progress->finish();
  s.result.final_dir = (fs::path(run.run_dir) / "final").string();
  s.result.finished = true;
  // Distributed: rank 0 gathers the whole model and writes the export and the report.
  const std::unique_ptr<ParamStore> full = gather_full_store(s);
  if (!s.lead()) return;
  export_hf(full ? *full : *s.store, true, s.result.final_dir, cfg.export_type(), s.tokenizer_dir);
  try {
    write_report(run.run_dir);
  } catch (const Error& e) {
    log_warn(fmt::format("report not written: {}", e.what()));
  }
  s.result.finished = true;
}

}  // namespace

TrainResult Trainer::run() {
  DSV3_CHECK(!s_, "Trainer::run called twice");
  s_ = std::make_unique<TrainerState>();
  TrainerState& s = *s_;
  const auto t_start = Clock::now();
  const bool resuming = resume_from_.has_value();
  s.threads = config_.threads > 0 ? config_.threads : num_threads();
  set_num_threads(s.threads);
  // Distributed: rank 0 alone prints and writes the run's files; the others wait for what it
  // prepares (run dir, tokenizer, token cache) and then read it.
  setup_parallel(s, config_, run_.comm);
  RunOptions run = run_;
  if (!s.lead()) run.quiet = true;
  auto barrier = [&] {
    if (s.distributed()) s.world->barrier();
  };
  if (s.lead())
    for (const auto& w : warnings_) log_warn(w);

  if (s.lead()) {
    fs::create_directories(run.run_dir);
    if (!lock_) lock_ = std::make_unique<RunDirLock>(run.run_dir);
    prepare_run_dir(s, config_, run, resuming);
    setup_tokenizer(s, config_, run, files_, resuming);
    setup_data(s, config_, run);
  }
  barrier();
  if (!s.lead()) {
    setup_tokenizer(s, config_, run, files_, true);
    setup_data(s, config_, run);
  }
  setup_model(s, config_, run, resuming ? &*resume_from_ : nullptr);
  if (!resuming) begin_metrics(s, config_, run);
  if (!run.quiet)
    s.progress = std::make_unique<ProgressLine>(s.total, s.step, config_.progress_every);

  std::vector<int32_t> buf(size_t(config_.batch * (config_.seq_len + 1)));
  const auto t_loop = Clock::now();
  auto elapsed = [&] { return s.elapsed_before + seconds_since(t_loop); };
  while (s.step < s.total) {
    StepRecord rec = train_step(s, config_, buf);
    rec.time_s = elapsed();
    if (s.metrics) s.metrics->write(rec);
    after_step(s, config_, run, rec, elapsed());
    if (run.stop_after >= 0 && s.step >= run.stop_after && s.step < s.total) break;
  }
  if (s.step == s.total) finish_run(s, config_, run);
  barrier();
  s.result.step = s.step;
  s.result.wall_s = seconds_since(t_start);
  return s.result;
}

}  // namespace dsv3::train
