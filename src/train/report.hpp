// The run report: RUN_DIR/report.html, self-contained (inline SVG and CSS, no scripts), with the
// training and validation loss curves (main and MTP), LR, tokens/s, MaxVio per MoE layer and an
// expert-load heatmap per MoE layer (experts x steps, colour = load relative to a perfectly even
// share), optionally beside a second run (a no-balancing baseline) for the before/after picture;
// and RUN_DIR/loss.svg, the loss curve alone. Charts are drawn from metrics.jsonl (metrics.hpp).
#pragma once
#include <string>
#include <vector>

#include "train/metrics.hpp"
#include "train/svg.hpp"

namespace dsv3::train {

struct ReportPaths {
  std::string html, loss_svg;
  std::string compared_with;  // metrics file of the second run, empty when none
};

// Reads RUN_DIR/metrics.jsonl and writes RUN_DIR/report.html and RUN_DIR/loss.svg (atomically).
// The second run is compare_dir when given (its metrics.jsonl must exist), else
// RUN_DIR/baseline/ when it has a metrics.jsonl.
ReportPaths write_report(const std::string& run_dir, const std::string& compare_dir = "");

// A run's metrics with the name it is shown under.
struct NamedLog {
  std::string label;
  const MetricsLog* log = nullptr;
};

std::string render_report_html(const NamedLog& run, const NamedLog* other = nullptr);
std::string render_loss_svg(const NamedLog& run, const NamedLog* other = nullptr);

}  // namespace dsv3::train
