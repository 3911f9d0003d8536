// `dsv3 report RUN_DIR [--compare RUN_DIR2 ...]`: regenerates RUN_DIR/report.html (loss, LR,
// throughput, MaxVio and expert-load heatmaps, self-contained) and RUN_DIR/loss.svg from
// RUN_DIR/metrics.jsonl; other runs (or RUN_DIR/baseline/) are shown beside it, with RUN_DIR's
// final losses relative to each (an ablation: `dsv3 report fp8 --compare bf16 --compare fp32`).
#include <cstdio>
#include <string>
#include <vector>

#include "command.hpp"
#include "train/report.hpp"

namespace {

struct ReportArgs {
  std::string run_dir;
  std::vector<std::string> compare_dirs;
};

void setup(CLI::App& app) {
  auto args = std::make_shared<ReportArgs>();
  auto* sub = app.add_subcommand("report", "Write RUN_DIR/report.html and loss.svg from metrics");
  sub->add_option("run_dir", args->run_dir, "training run directory (holds metrics.jsonl)")
      ->required();
  sub->add_option("--compare", args->compare_dirs,
                  "a run to show beside it; repeat for several (default: RUN_DIR/baseline if "
                  "present)");
  sub->callback([args] {
    auto out = dsv3::train::write_report(args->run_dir, args->compare_dirs);
    std::printf("wrote %s\nwrote %s\n", out.html.c_str(), out.loss_svg.c_str());
    for (const auto& c : out.compared_with) std::printf("compared with %s\n", c.c_str());
  });
}

}  // namespace

DSV3_COMMAND(setup);
