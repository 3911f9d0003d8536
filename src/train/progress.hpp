// The training loop's live progress line:
//   step 120/600 | loss 4.213 (mtp 4.51) | val 4.30 | lr 3.0e-4 | 12.3k tok/s | MFU 31% |
//   MaxVio 0.18 | ETA 2m10s
// redrawn in place on a terminal, printed as a line every N steps otherwise (logs, CI).
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "train/metrics.hpp"

namespace dsv3::train {

// NaN fields are left out of the line.
struct ProgressInfo {
  int64_t step = 0, total_steps = 0;
  double loss = 0;
  double mtp_loss = kNoValue;
  double val_loss = kNoValue;
  double lr = kNoValue;
  double tokens_per_s = kNoValue;
  double mfu = kNoValue;  // fraction
  double max_vio = kNoValue;
  double eta_s = kNoValue;
};

std::string format_progress(const ProgressInfo& p);
std::string format_count(double v);     // 950, 12.3k, 4.50M, 1.20G
std::string format_duration(double s);  // 45s, 2m10s, 1h05m
std::string format_lr(double lr);       // 3.0e-4

class ProgressLine {
 public:
  // every_n: on a non-terminal, print every every_n steps (and the last). tty < 0: ask isatty.
  ProgressLine(int64_t total_steps, int64_t first_step = 0, int64_t every_n = 10, int tty = -1,
               FILE* out = stderr);
  ~ProgressLine();
  // Fills in eta_s from the pace since construction when it is NaN.
  void update(ProgressInfo p);
  // Prints a message on its own line without mangling the in-place line.
  void message(const std::string& msg);
  void finish();

 private:
  int64_t total_, first_, every_;
  bool tty_, drawn_ = false;
  FILE* out_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsv3::train
