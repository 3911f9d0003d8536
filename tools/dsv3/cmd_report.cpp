// `dsv3 report RUN_DIR [--compare RUN_DIR2]`: regenerates RUN_DIR/report.html (loss, LR,
// throughput, MaxVio and expert-load heatmaps, self-contained) and RUN_DIR/loss.svg from
// RUN_DIR/metrics.jsonl; a second run (or RUN_DIR/baseline/) is shown beside it.
#include <cstdio>
#include <string>

#include "command.hpp"
#include "train/report.hpp"

namespace {

struct ReportArgs {
  std::string run_dir, compare_dir;
};

void setup(CLI::App& app) {
  auto args = std::make_shared<ReportArgs>();
  auto* sub = app.add_subcommand("report", "Write RUN_DIR/report.html and loss.svg from metrics");
  sub->add_option("run_dir", args->run_dir, "training run directory (holds metrics.jsonl)")
      ->required();
  sub->add_option("--compare", args->compare_dir,
                  "a second run to show beside it (default: RUN_DIR/baseline if present)");
  sub->callback([args] {
    auto out = dsv3::train::write_report(args->run_dir, args->compare_dir);
    std::printf("wrote %s\nwrote %s\n", out.html.c_str(), out.loss_svg.c_str());
    if (!out.compared_with.empty()) std::printf("compared with %s\n", out.compared_with.c_str());
  });
}

}  // namespace

DSV3_COMMAND(setup);
