// Flags shared by the commands that run a model: threads and arithmetic precision.
#pragma once
#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "backend/cpu/linear.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cli {

// The flag's long name ("-n,--max-new-tokens" -> "--max-new-tokens") for messages.
inline std::string flag_name(const std::string& names) {
  const size_t comma = names.rfind(',');
  return comma == std::string::npos ? names : names.substr(comma + 1);
}

// A whole base-10 integer in [lo, hi]. CLI11's own conversion clamps (2^64 -> INT64_MAX) and
// accepts a value that its caller then treats as "not given" (--steps -1), so integer flags go
// through here.
inline int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  int64_t v = 0;
  const char *b = text.data(), *e = text.data() + text.size();
  const auto [end, ec] = std::from_chars(b, e, v);
  DSV3_CHECK(ec != std::errc::result_out_of_range && !text.empty(),
             "{} {}: out of range, must be an integer in [{}, {}]", flag, text, lo, hi);
  DSV3_CHECK(ec == std::errc() && end == e, "{} '{}' is not an integer", flag, text);
  DSV3_CHECK(v >= lo && v <= hi, "{} {}: must be in [{}, {}]", flag, v, lo, hi);
  return v;
}

// An integer flag checked by parse_int; `dst` keeps its value when the flag is absent.
template <typename T>
CLI::Option* add_int_option(CLI::App* sub, const std::string& names, T& dst, int64_t lo, int64_t hi,
                            const std::string& help) {
  const std::string flag = flag_name(names);
  return sub->add_option_function<std::string>(
      names, [&dst, flag, lo, hi](const std::string& s) { dst = T(parse_int(flag, s, lo, hi)); },
      help);
}

// Worker threads beyond the cores only slow a run down (the decode spin team busy-waits), so a
// larger count is capped at the cores with a warning.
inline int cap_threads(int requested) {
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  if (requested <= cores) return requested;
  std::fprintf(stderr, "dsv3: warning: --threads %d exceeds the %d cores; using %d\n", requested,
               cores, cores);
  return cores;
}

struct RunFlags {
  int threads = 0;
  std::string precision;

  void add(CLI::App* sub, const std::string& default_precision) {
    precision = default_precision;
    add_int_option(sub, "--threads", threads, 0, 1 << 20, "worker threads (default: all cores)");
    sub->add_option("--precision", precision,
                    "f32: FP32 arithmetic on the stored weights (exact); bf16: BF16 GEMMs for "
                    "prefill and BF16 products for FP8 decode (faster)")
        ->capture_default_str();
  }
  cpu::Compute compute() const {
    if (precision == "f32") return cpu::Compute::F32;
    if (precision == "bf16") return cpu::Compute::BF16;
    DSV3_FAIL("--precision must be f32 or bf16, got '{}'", precision);
  }
  void apply() const { set_num_threads(cap_threads(threads)); }
};

}  // namespace dsv3::cli
