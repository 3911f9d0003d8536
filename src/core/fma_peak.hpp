// The hardware FP32 arithmetic limit of this machine: a register-only loop of independent FMA
// chains on every thread, no memory traffic. It is the denominator of every MFU figure (the
// trainer's progress line, metrics.jsonl and report, bench_train), so that MFU means model FLOPs
// over what the cores can do, never over what some GEMM happened to reach.
#pragma once
#include <cstdint>

namespace dsv3 {

struct FmaPeak {
  double flops = 0;  // FP32 FLOP/s on `threads` threads (an FMA counts 2)
  int threads = 0;
  const char* name = "";  // which peak: "fp32_fma_avx512", "fp32_fma_avx2" or "fp32_fma_scalar"
};

// Runs `iters` FMAs per lane and thread (16 lanes with AVX-512) in 16 independent chains, enough
// to cover the FMA latency on two ports; the best of `reps` timings (~5 ms each with the default
// on a 2-3 GHz core).
FmaPeak measure_fp32_fma_peak(int threads, int64_t iters = 20'000'000, int reps = 5);

}  // namespace dsv3
