// The `dsv3 train` job: text in, a DeepSeek-V3 model out. Trainer wires the parts together —
// tokenizer training (tokenizer/trainer.hpp), cached token shards and the validation split
// (data.hpp), seeded init (params.hpp), the training step (model_train.hpp: main + MTP loss,
// sequence-wise balance loss), gradient clipping and AdamW (optimizer.hpp) on the schedules of
// lr_schedule.hpp, the auxiliary-loss-free bias update (balance.hpp), metrics, progress line,
// evaluation with samples, atomic checkpoints with exact resume (checkpoint.hpp) and the final
// Hugging Face export (export.hpp) plus report.
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

#include "dist/comm.hpp"
#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/params.hpp"
#include "train/train_config.hpp"

namespace dsv3::train {

struct TrainerState;  // trainer_state.hpp
class RunDirLock;     // run_lock.hpp

struct RunOptions {
  std::string run_dir = "runs/default";
  bool overwrite = false;   // a fresh run may replace the checkpoints/metrics of run_dir
  int64_t stop_after = -1;  // stop right after this step, as if killed (no final work); tests
  int64_t steps = -1;       // on resume: a new run length (changes the LR schedule)
  int threads = -1;         // on resume: >= 1 overrides the recorded count (losses may differ)
  bool quiet = false;       // no progress line, tokenizer or tokenization bars
  std::string name = "balanced";  // run name in metrics.jsonl and the report
  // The job's communicator (mpirun: every rank runs the Trainer with the same options; rank 0
  // alone prints and writes the run's files). Null or one rank: one process.
  dist::Comm* comm = nullptr;
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
  // corrupt, with a warning); a run dir with no checkpoint yet starts over from step 0 with the
  // options recorded in RUN_DIR/run.json. Throws when checkpoints exist but none verifies, or
  // when there is neither a checkpoint nor run.json. Locks RUN_DIR (run_lock.hpp) first.
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
  std::unique_ptr<RunDirLock> lock_;  // held from resume() or the start of run() to the end
};

// RUN_DIR/run.json: the options of a run (train_config with the thread count), written when the
// run starts, before any other file of it, so a run killed before its first checkpoint can be
// resumed from the start.
std::string run_record_path(const std::string& run_dir);

}  // namespace dsv3::train
