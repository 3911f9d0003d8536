// Options of a `dsv3 train` run (TrainConfig) and the built-in default model: every knob of the
// training loop in one struct with JSON round trip and `key=value` overrides. Keys of the model's
// HF config.json are accepted beside the training keys, so `--set hidden_size=384 --set lr=1e-3`
// edits both. Defaults follow the DeepSeek-V3 report (§4.2 hyper-parameters; §2.1.2 γ and α;
// §2.2 λ), scaled down to a run that finishes in minutes on two CPU cores. docs/training.md
// ("Running dsv3 train") lists every key.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "model/config.hpp"
#include "train/lr_schedule.hpp"
#include "train/optimizer.hpp"

namespace dsv3::train {

// The Debian `fortunes` text that scripts/setup.sh installs.
inline constexpr const char* kDefaultCorpus = "/usr/share/games/fortunes";

struct TrainConfig {
  // Data and tokenizer.
  std::vector<std::string> data = {kDefaultCorpus};
  std::string tokenizer;      // dir with tokenizer.json; empty: train one on the corpus
  int64_t vocab_size = 2048;  // of the trained tokenizer (special tokens included)
  std::string doc_split = "auto";
  double val_fraction = 0.02;

  // Run length and batch.
  int64_t steps = 1500;
  int64_t batch = 16;
  int64_t seq_len = 128;
  uint64_t seed = 0;
  int threads = 0;  // 0: all cores (the count used is recorded and kept on resume)

  // Optimizer and schedule (report §4.2; β1/β2/ε are AdamWConfig's).
  double lr = 3e-3;
  int64_t warmup = -1;  // steps; < 0: warmup_frac of the run
  double warmup_frac = 0.05;
  std::string lr_schedule = "deepseek-v3";  // deepseek-v3 | cosine | constant
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  std::string moments = "bf16";  // bf16 | f32

  // DeepSeek-V3 objectives.
  bool balance = true;      // auxiliary-loss-free bias update (false: γ = 0, the baseline)
  double gamma = 0.001;     // bias update speed, 0 for the last part of the run (lr_schedule.hpp)
  double alpha = 1e-4;      // sequence-wise balance loss
  bool mtp = true;          // MTP objective (needs num_nextn_predict_layers >= 1)
  double mtp_lambda = 0.3;  // λ for the first 10/14.8 of the run
  double mtp_lambda_late = 0.1;  // λ afterwards
  bool recompute = false;
  // Inputs of the linear layers' GEMMs (backend/cpu/linear_lowp.hpp): fp32 | bf16 | fp8.
  std::string precision = "fp32";

  // Checkpoints, evaluation, samples, export.
  int64_t checkpoint_every = 250;  // and at the end; 0: only at the end
  int keep_last = 3;
  int64_t eval_every = 250;  // and at step 0 and at the end; 0: only at the end
  int64_t eval_batches = 4;
  int64_t sample_every = -1;  // < 0: eval_every; 0: only at the end
  std::vector<std::string> sample_prompts = {"The", "A man", "Love is", "Q: What"};
  int64_t sample_tokens = 40;
  double sample_temperature = 0.8;
  int64_t sample_top_k = 40;
  std::string export_dtype = "bf16";  // bf16 | f32 | fp8
  int64_t progress_every = 10;        // progress line period when stderr is not a terminal

  // Parallel layout under mpirun (docs/distributed.md): world size = dp · ep; the global batch is
  // split over all ranks; ep ranks hold the routed experts in equal shares. dp 0: world / ep.
  // Node-limited routing: ranks_per_node consecutive EP ranks form a node (0: one node), each
  // token's experts on at most max_nodes nodes (DeepSeek-V3: 4).
  int64_t dp = 0, ep = 1, ranks_per_node = 0, max_nodes = 4;
  // Gradients reduced layer by layer during the backward (false: all after it; benchmarks).
  bool grad_overlap = true;
  // Reported gradient ranges are merged into buckets of at least this many MiB before their
  // reduce-scatter starts (0: one bucket per layer).
  double grad_bucket_mb = 0;

  // The model: HF config.json keys; vocab_size is set from the tokenizer.
  nlohmann::json model;

  nlohmann::json to_json() const;
  // Unknown keys are errors naming the key and `where`.
  static TrainConfig from_json(const nlohmann::json& j, const std::string& where);
  // key=value: a TrainConfig key or a model config.json key; the value is parsed as JSON,
  // falling back to a string (lr=1e-3, mtp=false, data=["a","b"], lr_schedule=cosine).
  void set(const std::string& key_value);
  // Checks every value (and the model config, with vocab_size when not yet known); throws
  // dsv3::Error naming the key.
  void validate() const;
  // The layout checks for a job of `world` ranks (dp · ep = world, experts split over ep, the
  // batch over the ranks, nodes over ep); throws dsv3::Error saying what to change.
  void validate_layout(int world) const;

  model::ModelConfig model_config(int64_t vocab) const;
  LrScheduleConfig lr_config() const;
  AdamWConfig adamw_config() const;
  DType export_type() const;
  int64_t sample_period() const { return sample_every < 0 ? eval_every : sample_every; }
};

// The built-in default model: a small DeepSeek-V3 (MLA with q_lora, 8 routed experts + 1 shared,
// sigmoid routing with group-limited noaux_tc selection, one dense layer first, MTP depth 1).
nlohmann::json default_model_json();

DType parse_export_dtype(const std::string& s);  // bf16 | f32 | fp8

// Model FLOPs of one training token (forward + backward = 3 × forward): 2 per multiply-add of
// every linear weight a token passes through (attention projections, dense MLP or router + shared
// + K routed experts, LM head; the MTP module's eh_proj, layer and head when MTP is on), plus
// causal attention 2·H·(T+1)/2·(qk_head_dim + v_head_dim) per layer. Embedding lookups, norms
// and activations are not counted.
double train_flops_per_token(const model::ModelConfig& c, int64_t seq_len, bool mtp);

}  // namespace dsv3::train
