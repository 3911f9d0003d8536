// `dsv3 init --config FILE --out DIR [--seed N] [--dtype bf16|f32|fp8]`: a randomly initialised
// checkpoint in the released Hugging Face layout for any config.
#include <cstdio>

#include "command.hpp"
#include "core/error.hpp"
#include "model/config.hpp"
#include "model/export.hpp"

namespace {
struct InitArgs {
  std::string config, out, dtype = "bf16";
  uint64_t seed = 0;
};

void run_init(const InitArgs& a) {
  using namespace dsv3;
  model::ModelConfig c = model::load_config(a.config);
  model::ExportOptions opt;
  if (a.dtype == "bf16")
    opt.dtype = DType::BF16;
  else if (a.dtype == "f32")
    opt.dtype = DType::F32;
  else if (a.dtype == "fp8")
    opt.dtype = DType::F8_E4M3;
  else
    DSV3_FAIL("--dtype must be bf16, f32 or fp8, got '{}'", a.dtype);
  std::printf("dsv3 init: seed %llu, dtype %s -> %s\n", (unsigned long long)a.seed, a.dtype.c_str(),
              a.out.c_str());
  const uint64_t seed = a.seed;
  model::save_hf_checkpoint(
      a.out, c,
      [seed](const model::ParamSpec& s, float* dst) { model::random_param_fill(s, dst, seed); },
      opt);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  auto* sub = app.add_subcommand("init", "Write a randomly initialised checkpoint for a config");
  sub->add_option("--config", a->config, "config.json (HF DeepSeek-V2/V3 keys)")->required();
  sub->add_option("--out", a->out, "output directory")->required();
  sub->add_option("--seed", a->seed, "random seed")->capture_default_str();
  sub->add_option("--dtype", a->dtype, "bf16, f32 or fp8 (128x128 block-scaled e4m3)")
      ->capture_default_str();
  sub->callback([a] { run_init(*a); });
}
}  // namespace
DSV3_COMMAND(setup);
