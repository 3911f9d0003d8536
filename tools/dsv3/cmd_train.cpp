// `dsv3 train`: text in, a DeepSeek-V3 model out (the product's main job). With no arguments it
// trains the built-in small V3 on the default corpus into runs/default and prints samples.
// Options: defaults < --options FILE < --config FILE (model keys) < flags < --set key=value.
// docs/training.md ("Running dsv3 train") documents every flag and key.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "command.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "dist/comm.hpp"
#include "io/file.hpp"
#include "options.hpp"
#include "train/trainer.hpp"

namespace {

struct TrainArgs {
  std::string config, options, out, resume, tokenizer, name, precision;
  std::vector<std::string> set, data;
  int64_t steps = -1, checkpoint_every = -1;
  int64_t seed = -1;
  int64_t dp = -1, ep = -1, ranks_per_node = -1, max_nodes = -1;
  int threads = -1;
  bool no_balance = false, overwrite = false, quiet = false;
};

nlohmann::json read_json(const std::string& path, const char* what) {
  const std::string text = dsv3::io::read_file(path);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  DSV3_CHECK(!j.is_discarded() && j.is_object(), "{} '{}' is not a JSON object", what, path);
  return j;
}

void print_result(const dsv3::train::TrainResult& r, const std::string& run_dir) {
  std::printf("\n");
  for (const auto& s : r.samples)
    std::printf("--- sample (prompt \"%s\")\n%s\n", s.prompt.c_str(), s.text.c_str());
  std::printf("---\nsteps %lld | validation loss %.4f (ppl %.2f) | %.0f s\n", (long long)r.step,
              r.val_loss, r.val_ppl, r.wall_s);
  if (r.finished)
    std::printf("model: %s\nreport: %s/report.html\n", r.final_dir.c_str(), run_dir.c_str());
}

void finish(dsv3::train::Trainer& t, const dsv3::train::RunOptions& run, dsv3::dist::Comm* comm);

void run_train(const TrainArgs& a, dsv3::dist::Comm* comm) {
  using namespace dsv3;
  train::RunOptions run;
  run.quiet = a.quiet;
  run.comm = comm;
  if (!a.resume.empty()) {
    DSV3_CHECK(a.config.empty() && a.options.empty() && a.set.empty() && a.data.empty() &&
                   a.out.empty() && a.tokenizer.empty() && a.seed < 0 && a.checkpoint_every < 0 &&
                   a.precision.empty() && !a.no_balance && !a.overwrite && a.dp < 0 &&
                   a.ep < 0 && a.ranks_per_node < 0 && a.max_nodes < 0,
               "--resume continues a run with its recorded options: only --steps, --threads and "
               "--quiet may be given with it");
    run.run_dir = a.resume;
    run.steps = a.steps;
    run.threads = a.threads >= 0 ? dsv3::cli::cap_threads(a.threads) : a.threads;
    auto t = train::Trainer::resume(run);
    finish(t, run, comm);
    return;
  }
  train::TrainConfig cfg;
  if (!a.options.empty())
    cfg = train::TrainConfig::from_json(read_json(a.options, "--options"), a.options);
  if (!a.config.empty()) {
    nlohmann::json m = read_json(a.config, "--config");
    if (!cfg.model.is_object()) cfg.model = nlohmann::json::object();
    for (auto& [k, v] : m.items())
      if (k != "vocab_size") cfg.model[k] = v;  // the vocabulary comes from the tokenizer
  }
  if (!a.data.empty()) cfg.data = a.data;
  if (!a.tokenizer.empty()) cfg.tokenizer = a.tokenizer;
  if (a.steps >= 0) cfg.steps = a.steps;
  if (a.seed >= 0) cfg.seed = uint64_t(a.seed);
  if (a.checkpoint_every >= 0) cfg.checkpoint_every = a.checkpoint_every;
  if (a.threads >= 0) cfg.threads = dsv3::cli::cap_threads(a.threads);
  if (a.no_balance) cfg.balance = false;
  if (a.dp >= 0) cfg.dp = a.dp;
  if (a.ep >= 0) cfg.ep = a.ep;
  if (a.ranks_per_node >= 0) cfg.ranks_per_node = a.ranks_per_node;
  if (a.max_nodes >= 0) cfg.max_nodes = a.max_nodes;
  if (!a.precision.empty()) cfg.precision = a.precision;
  for (const auto& kv : a.set) cfg.set(kv);
  // The default run dir is scratch space: running `dsv3 train` again starts it over.
  run.run_dir = a.out.empty() ? "runs/default" : a.out;
  run.overwrite = a.overwrite || a.out.empty();
  run.name = !a.name.empty() ? a.name : cfg.balance ? "balanced" : "no balancing";
  train::Trainer t(cfg, run);  // checks options, inputs and the run dir before any work
  finish(t, run, comm);
}

// Runs the job; only rank 0 prints. An error past the start on one rank of a distributed job
// ends the whole job (the other ranks would wait for it in a collective).
void finish(dsv3::train::Trainer& t, const dsv3::train::RunOptions& run, dsv3::dist::Comm* comm) {
  const bool distributed = comm && comm->size() > 1;
  try {
    const auto r = t.run();
    if (!comm || comm->rank() == 0) print_result(r, run.run_dir);
  } catch (const std::exception& e) {
    if (!distributed) throw;
    std::fprintf(stderr, "dsv3: rank %d: error: %s\n", comm->rank(), e.what());
    dsv3::dist::abort_job(1);
  }
}

void setup(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* sub = app.add_subcommand(
      "train", "Train a DeepSeek-V3 model on text (no arguments: the built-in default run)");
  sub->add_option("--config", a->config, "model config.json (HF DeepSeek-V3 keys)");
  sub->add_option("--options", a->options, "training options JSON file");
  sub->add_option("--set", a->set, "key=value: a training option or model config key (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
  sub->add_option("--data", a->data, "text files or directories (default: the fortunes corpus)")
      ->expected(1, -1);
  sub->add_option("--out", a->out, "run directory (default: runs/default, started over)");
  using dsv3::cli::add_int_option;
  add_int_option(sub, "--steps", a->steps, 0, int64_t(1) << 40, "optimizer steps");
  add_int_option(sub, "--seed", a->seed, 0, INT64_MAX,
                 "seed of init, data order and validation split");
  add_int_option(sub, "--checkpoint-every", a->checkpoint_every, 0, INT64_MAX,
                 "steps between checkpoints");
  add_int_option(sub, "--threads", a->threads, 0, 1 << 20, "worker threads (default: all cores)");
  sub->add_option("--resume", a->resume, "continue RUN_DIR from its newest valid checkpoint");
  sub->add_option("--tokenizer", a->tokenizer, "dir with tokenizer.json (default: train one)");
  sub->add_option("--name", a->name, "run name shown in the report");
  sub->add_option("--precision", a->precision,
                  "inputs of the linear layers' GEMMs: fp32 | bf16 | fp8 (DeepSeek-V3 FP8 recipe)");
  sub->add_flag("--no-balance", a->no_balance, "no auxiliary-loss-free balancing (γ = 0)");
  sub->add_flag("--overwrite", a->overwrite, "start --out over if it already holds a run");
  sub->add_flag("--quiet", a->quiet, "no progress output");
  add_int_option(sub, "--dp", a->dp, 1, 1 << 20,
                 "data-parallel degree under mpirun (default: ranks / ep)");
  add_int_option(sub, "--ep", a->ep, 1, 1 << 20,
                 "expert-parallel degree: the routed experts split over this many ranks");
  add_int_option(sub, "--ranks-per-node", a->ranks_per_node, 0, 1 << 20,
                 "EP ranks per node for node-limited routing (0: one node)");
  add_int_option(sub, "--max-nodes", a->max_nodes, 1, 1 << 20,
                 "node-limited routing: experts of a token on at most this many nodes (V3: 4)");
  sub->callback([a] {
    // Under mpirun every rank runs this; the refusals before any work (options, layout) are the
    // same on every rank, so only rank 0 reports them and the others exit quietly.
    auto comm = dsv3::dist::make_world_comm();
    try {
      run_train(*a, comm.get());
    } catch (const dsv3::Error&) {
      if (comm->rank() != 0) throw CLI::RuntimeError(1);
      throw;
    }
  });
}

}  // namespace

DSV3_COMMAND(setup);
