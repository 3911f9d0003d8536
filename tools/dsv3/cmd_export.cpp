// `dsv3 export RUN_DIR [--step N] --out DIR [--dtype bf16|f32|fp8]`: a training checkpoint as a
// Hugging Face DeepSeek-V3 dir (config.json, model.safetensors, tokenizer files, MTP included).
#include <cstdio>

#include "command.hpp"
#include "options.hpp"
#include "train/export.hpp"
#include "train/train_config.hpp"

namespace {

void setup(CLI::App& app) {
  struct Args {
    std::string run_dir, out, dtype = "bf16";
    int64_t step = -1;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("export", "Export a training checkpoint as a Hugging Face dir");
  sub->add_option("run_dir", a->run_dir, "training run directory")->required();
  dsv3::cli::add_int_option(sub, "--step", a->step, 0, INT64_MAX,
                            "checkpoint step (default: the newest valid one)");
  sub->add_option("--out", a->out, "output directory")->required();
  sub->add_option("--dtype", a->dtype, "bf16, f32 or fp8 (128x128 block-scaled e4m3)")
      ->capture_default_str();
  sub->callback([a] {
    const auto dtype = dsv3::train::parse_export_dtype(a->dtype);
    const int64_t step = dsv3::train::export_checkpoint(a->run_dir, a->step, a->out, dtype);
    std::printf("exported step %lld of %s -> %s (%s)\n", (long long)step, a->run_dir.c_str(),
                a->out.c_str(), a->dtype.c_str());
  });
}

}  // namespace

DSV3_COMMAND(setup);
