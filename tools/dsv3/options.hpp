// Flags shared by the commands that run a model: threads and arithmetic precision.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "backend/cpu/linear.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cli {

struct RunFlags {
  int threads = 0;
  std::string precision;

  void add(CLI::App* sub, const std::string& default_precision) {
    precision = default_precision;
    sub->add_option("--threads", threads, "worker threads (default: all cores)");
    sub->add_option("--precision", precision,
                    "f32: FP32 arithmetic on the stored weights (exact); bf16: BF16 GEMMs for "
                    "prefill (faster)")
        ->capture_default_str();
  }
  cpu::Compute compute() const {
    if (precision == "f32") return cpu::Compute::F32;
    if (precision == "bf16") return cpu::Compute::BF16;
    DSV3_FAIL("--precision must be f32 or bf16, got '{}'", precision);
  }
  void apply() const { set_num_threads(threads); }
};

}  // namespace dsv3::cli
