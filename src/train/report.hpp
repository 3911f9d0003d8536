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
  std::vector<std::string> compared_with;  // metrics files of the runs shown beside it
};

// Reads RUN_DIR/metrics.jsonl and writes RUN_DIR/report.html and RUN_DIR/loss.svg (atomically).
// The runs shown beside it are compare_dirs when given (each must hold a metrics.jsonl), else
// RUN_DIR/baseline/ when it has a metrics.jsonl.
ReportPaths write_report(const std::string& run_dir,
                         const std::vector<std::string>& compare_dirs = {});

// A run's metrics with the name it is shown under.
struct NamedLog {
  std::string label;
  const MetricsLog* log = nullptr;
};

std::string render_report_html(const NamedLog& run, const std::vector<NamedLog>& others = {});
std::string render_loss_svg(const NamedLog& run, const std::vector<NamedLog>& others = {});

}  // namespace dsv3::train
