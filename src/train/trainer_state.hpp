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
};

// Hex hash of DIR/tokenizer.json: ties token caches and checkpoints to their tokenizer.
std::string tokenizer_json_hash(const std::string& dir);

// The step's model options from the config and the schedules (MTP λ, recompute, balance α).
TrainOptions step_options(const TrainConfig& cfg, int64_t step, int64_t total);

// Decoder index of every MoE layer in StepStats order: main layers, then the MTP layers.
std::vector<int> moe_layers(const model::ModelConfig& c, bool mtp);

// AdamW ranges from the parameter table: decay per params.hpp, the routing bias and (with tied
// MTP embeddings) the unused MTP copies of the embedding and head are not updated.
std::vector<ParamRange> adamw_ranges(const ParamLayout& layout, bool tie_mtp);

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
