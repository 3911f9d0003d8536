// RUN_DIR/metrics.jsonl: one JSON record per line, appended and flushed as training goes.
// Kinds: "run" (names and shapes the report needs), "step" (loss, LR, throughput, balance),
// "eval" (validation loss) and "sample" (generated text). On resume the file is cut back to the
// resumed step so it always describes one consistent run. Schema: docs/training-runs.md.
#pragma once
#include <cstdint>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dsv3::train {

inline constexpr double kNoValue = std::numeric_limits<double>::quiet_NaN();

// Written once at the start of a run (step 0).
struct RunRecord {
  std::string name;             // shown in the report ("balanced", "no balancing", ...)
  std::vector<int> moe_layers;  // decoder layer index of each MoE layer, in expert_load order
  int n_routed_experts = 0;
  int64_t total_steps = 0;
  nlohmann::json extra = nlohmann::json::object();  // config, options: free form
};

struct StepRecord {
  int64_t step = 0;
  double loss = kNoValue;
  double mtp_loss = kNoValue;  // NaN when the model has no MTP module
  double lr = kNoValue;
  double tokens_per_s = kNoValue;
  double mfu = kNoValue;  // fraction in [0, 1]
  double grad_norm = kNoValue;
  double time_s = kNoValue;                      // wall time since the run started
  std::vector<double> max_vio;                   // [moe layer]
  std::vector<std::vector<double>> expert_load;  // [moe layer][expert] token counts or shares
  // Bytes one rank holds: parameter and gradient arenas, optimizer state, saved activations (the
  // largest rank's in a distributed run).
  double mem_bytes = kNoValue;
  double comm_wait_s = kNoValue;  // distributed: gradient reduction the backward did not hide
  // Distributed: the layout and the expert dispatch volume of the step (docs/distributed.md).
  nlohmann::json dist;
};

struct EvalRecord {
  int64_t step = 0;
  double val_loss = kNoValue;
  double val_mtp_loss = kNoValue;
  double ppl = kNoValue;
};

struct SampleRecord {
  int64_t step = 0;
  std::string prompt, text;
};

nlohmann::json to_json(const RunRecord& r);
nlohmann::json to_json(const StepRecord& r);
nlohmann::json to_json(const EvalRecord& r);
nlohmann::json to_json(const SampleRecord& r);

// Appends records to RUN_DIR/metrics.jsonl, flushing each line.
class MetricsWriter {
 public:
  // resume_step < 0: start a fresh file (an existing one is replaced). resume_step >= 0: keep the
  // records with step <= resume_step (and drop a torn last line), then append.
  MetricsWriter(const std::string& path, int64_t resume_step = -1);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void write(const nlohmann::json& record);
  template <typename R>
  void write(const R& r) {
    write(to_json(r));
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  FILE* f_ = nullptr;
};

// Rewrites `path` atomically keeping only whole records with step <= step. A missing file is fine.
void truncate_metrics(const std::string& path, int64_t step);

struct MetricsLog {
  RunRecord run;  // defaults when the file has no run record
  bool has_run = false;
  std::vector<StepRecord> steps;
  std::vector<EvalRecord> evals;
  std::vector<SampleRecord> samples;
  bool torn_tail = false;  // the last line was cut short (a killed writer) and was skipped
};

// Parses a metrics file. A torn last line is skipped; any other malformed line throws naming
// the file and line. Unknown kinds are ignored (newer writers).
MetricsLog read_metrics(const std::string& path);

}  // namespace dsv3::train
