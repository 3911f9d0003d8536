// The inside of a `dsv3 train` run, shared by the trainer's files (not a public API): the state
// Trainer::run builds (trainer.cpp), the training step (trainer_step.cpp), validation and
// samples during training (trainer_eval.cpp), and the checkpoint form of that state
// (trainer_state.cpp).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/fma_peak.hpp"
#include "core/rng.hpp"
#include "dist/comm.hpp"
#include "dist/expert_dispatch.hpp"
#include "dist/grad_sync.hpp"
#include "model/config.hpp"
#include "tokenizer/tokenizer.hpp"
#include "train/checkpoint.hpp"
#include "train/data.hpp"
#include "train/lr_schedule.hpp"
#include "train/metrics.hpp"
#include "train/model_train.hpp"
#include "train/optimizer.hpp"
#include "train/params.hpp"
#include "train/progress.hpp"
#include "train/train_config.hpp"
#include "train/trainer.hpp"
#include "train/zero.hpp"

namespace dsv3::train {

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
  double flops_per_token = 0;
  FmaPeak peak;  // the MFU denominator
  std::unique_ptr<MetricsWriter> metrics;
  std::unique_ptr<ProgressLine> progress;
  double last_val = kNoValue;
  TrainResult result;
  Clock::time_point t0;

  // Distributed (trainer_dist.cpp, docs/distributed.md). World rank = dp_rank · ep + ep_rank;
  // the ep_comm ranks share the data-parallel index and split the experts, the dp_comm ranks
  // hold the same experts. One process: world null, every size 1.
  dist::Comm* world = nullptr;
  std::unique_ptr<dist::Comm> dp_comm, ep_comm;
  int rank = 0, ranks = 1, dp = 1, ep = 1, dp_rank = 0, ep_rank = 0;
  model::ExpertShard shard;
  model::NodeLimit node_limit;
  std::vector<std::pair<int64_t, int64_t>> expert_ranges;  // routed experts in the local arena
  std::unique_ptr<dist::GradSync> sync;
  std::unique_ptr<ShardedAdamW> zopt;  // ZeRO-1 over dp_comm (distributed runs; else opt)
  dist::DispatchStats dispatch;
  bool distributed() const { return ranks > 1; }
  bool lead() const { return rank == 0; }  // writes files, prints
};

// ---- trainer_dist.cpp ----
// The groups, the expert shard and the node limit of a job of world->size() ranks (the layout
// is validated already).
void setup_parallel(TrainerState& s, const TrainConfig& cfg, dist::Comm* world);
// After the store exists: padding for ZeRO-1, the sharded optimizer, the gradient sync.
void setup_parallel_model(TrainerState& s, const TrainConfig& cfg);
// Rows [b, e) of the global batch this rank trains on.
std::pair<int64_t, int64_t> local_rows(const TrainerState& s, int64_t batch);
// Global mean losses and summed expert loads into st (collective).
void reduce_step_stats(TrainerState& s, StepStats& st);
// Rank 0 receives every parameter into a full store (the others send their experts and get
// null); one process: null (the store is full). Collective.
std::unique_ptr<ParamStore> gather_full_store(TrainerState& s);
// The "layout" of the metrics and checkpoints.
nlohmann::json layout_json(const TrainerState& s);
// Per-rank bytes: parameter and gradient arenas plus optimizer state.
int64_t state_bytes(const TrainerState& s);

// Hex hash of DIR/tokenizer.json: ties token caches and checkpoints to their tokenizer.
std::string tokenizer_json_hash(const std::string& dir);

// The step's model options from the config and the schedules (MTP λ, recompute, balance α).
TrainOptions step_options(const TrainConfig& cfg, int64_t step, int64_t total);

// Decoder index of every MoE layer in StepStats order: main layers, then the MTP layers.
std::vector<int> moe_layers(const model::ModelConfig& c, bool mtp);

// AdamW ranges from the parameter table: decay per params.hpp, the routing bias and (with tied
// MTP embeddings) the unused MTP copies of the embedding and head are not updated.
std::vector<ParamRange> adamw_ranges(const ParamLayout& layout, bool tie_mtp);

// The expert-parallel group and node limit of a distributed run into o (forward and backward
// alike: the EP ranks run every MoE layer together).
void parallel_options(const TrainerState& s, TrainOptions& o);

// One optimizer step on the sampler's next batch: forward/backward, clipping, AdamW, bias update.
StepRecord train_step(TrainerState& s, const TrainConfig& cfg, std::vector<int32_t>& buf);

// Mean main and MTP loss over the first eval_batches·batch windows of the validation stream.
EvalRecord evaluate(TrainerState& s, const TrainConfig& cfg);

// Samples from the configured prompts with the inference engine at the current weights.
std::vector<SampleRecord> make_samples(TrainerState& s, const TrainConfig& cfg);

// Writes RUN_DIR/checkpoints/step-<s.step> (weights, AdamW state, sampler, RNG, meta.json).
void save_state(TrainerState& s, const TrainConfig& cfg, const RunOptions& run, double elapsed);
// Restores what save_state wrote into a state built from the same config.
void restore_state(TrainerState& s, const CheckpointData& ck);

}  // namespace dsv3::train
