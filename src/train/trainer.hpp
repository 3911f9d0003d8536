// The `dsv3 train` job: text in, a DeepSeek-V3 model out. Trainer wires the parts together —
// tokenizer training (tokenizer/trainer.hpp), cached token shards and the validation split
// (data.hpp), seeded init (params.hpp), the training step (model_train.hpp: main + MTP loss,
// sequence-wise balance loss), gradient clipping and AdamW (optimizer.hpp) on the schedules of
// lr_schedule.hpp, the auxiliary-loss-free bias update (balance.hpp), metrics, progress line,
// evaluation with samples, atomic checkpoints with exact resume (checkpoint.hpp) and the final
// Hugging Face export plus report.
//
// Exact resume: everything a step reads is either in the checkpoint (FP32 weights with the
// routing biases, AdamW moments and step, sampler position, RNG state) or a pure function of the
// config and the step (LR, γ, λ). The thread count is recorded and reused, so a resumed run
// repeats the uninterrupted run's losses bit for bit.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/params.hpp"
#include "train/train_config.hpp"

namespace dsv3::train {

struct TrainerState;  // trainer.cpp

struct RunOptions {
  std::string run_dir = "runs/default";
  bool overwrite = false;   // a fresh run may replace the checkpoints/metrics of run_dir
  int64_t stop_after = -1;  // stop right after this step, as if killed (no final work); tests
  int64_t steps = -1;       // on resume: a new run length (changes the LR schedule)
  int threads = -1;         // on resume: >= 1 overrides the recorded count (losses may differ)
  bool quiet = false;       // no progress line, tokenizer or tokenization bars
  std::string name = "balanced";  // run name in metrics.jsonl and the report
};

struct TrainResult {
  int64_t step = 0;  // optimizer steps done
  bool finished = false;
  double val_loss = kNoValue, val_ppl = kNoValue;
  std::vector<SampleRecord> samples;  // of the last evaluation
  std::string final_dir;              // RUN_DIR/final when finished
  double wall_s = 0;
};

class Trainer {
 public:
  // A fresh run: checks the options, the input files and the tokenizer dir; writes nothing.
  Trainer(TrainConfig config, RunOptions run);
  // Continues RUN_DIR from its newest valid checkpoint (older ones are tried when the newest is
  // corrupt, with a warning). Throws when none verifies.
  static Trainer resume(RunOptions run);
  ~Trainer();
  Trainer(Trainer&&) noexcept;

  TrainResult run();

  const TrainConfig& config() const { return config_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  TrainConfig config_;
  RunOptions run_;
  std::vector<std::string> files_;
  std::optional<CheckpointData> resume_from_;
  std::vector<std::string> warnings_;
  std::unique_ptr<TrainerState> s_;
};

// Writes a Hugging Face DeepSeek-V3 dir (config.json, model.safetensors in `dtype`, tokenizer
// files copied from tokenizer_dir when non-empty). With tie_mtp, the MTP module's embedding and
// head copies are written from the main embedding and lm_head (training shares them).
void export_hf(const ParamStore& store, bool tie_mtp, const std::string& dir, DType dtype,
               const std::string& tokenizer_dir);

// Rebuilds the parameter store of a checkpoint (meta "model_config" + "param.*" tensors).
ParamStore params_from_checkpoint(const CheckpointData& ck);

// `dsv3 export`: checkpoint `step` (< 0: the newest valid one) of run_dir to an HF dir.
// Returns the step exported.
int64_t export_checkpoint(const std::string& run_dir, int64_t step, const std::string& out,
                          DType dtype);

struct EvalResult {
  double loss = 0, ppl = 0;
  int64_t tokens = 0, sequences = 0;
};

// `dsv3 eval`: next-token loss and perplexity of the HF model dir on the documents of `inputs`
// (tokenized with the model dir's tokenizer, BOS/EOS framed, cut into windows of seq_len + 1).
EvalResult evaluate_model_dir(const std::string& model_dir, const std::vector<std::string>& inputs,
                              int64_t seq_len, int64_t batch, int64_t max_sequences);

}  // namespace dsv3::train
