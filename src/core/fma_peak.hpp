// The hardware FP32 arithmetic limit of this machine: a register-only loop of independent FMA
// chains on every thread, no memory traffic. It is the denominator of every MFU figure (the
// trainer's progress line, metrics.jsonl and report, bench_train), so that MFU means model FLOPs
// over what the cores can do, never over what some GEMM happened to reach.
#pragma once
#include <cstdint>

namespace dsv3 {

struct FmaPeak {
  double flops = 0;  // FP32 FLOP/s of `threads` threads (an FMA counts 2)
  int threads = 0;
  const char* name = "";  // which peak: "fp32_fma_avx512", "fp32_fma_avx2" or "fp32_fma_scalar"
};

// One core's peak times min(threads, hardware threads): the cores are alike (on this machine
// the 2-thread peak measured alone was 1.98x the 1-thread one), and a probe of all threads at
// once reads low whenever another process holds one of the cores for a moment (it read 188
// GFLOP/s for 2 threads while training then ran at 201, an MFU of 106%). The core's peak is the
// best of `reps` runs of `iters` FMAs per lane (16 lanes with AVX-512) in 16 independent chains,
// enough to cover the FMA latency on two ports (~5 ms each on a 2-3 GHz core).
FmaPeak measure_fp32_fma_peak(int threads, int64_t iters = 20'000'000, int reps = 8);

// The BF16 dot-product limit, measured the same way: a register-only loop of 16 independent
// vdpbf16ps chains (AVX512-BF16: 16 lanes × 2 BF16 products added into FP32, 64 FLOP per
// instruction). The denominator of MFU for BF16/FP8 training (the FP8 GEMMs run on the BF16 dot
// units). name "bf16_dot_avx512"; flops 0 where the build has no AVX512-BF16.
FmaPeak measure_bf16_dot_peak(int threads, int64_t iters = 20'000'000, int reps = 8);

// The same two loops run by `threads` threads at once (one OpenMP region, best of `reps`): what
// the threads can do together. Where two hardware threads share one core's vector units (SMT
// siblings: on this machine in December 2026 two threads together did what one did alone, for
// both loops), this is the limit a 2-thread run meets, and the per-core figures above times the
// thread count overstate it. names "fp32_fma_concurrent" / "bf16_dot_concurrent".
FmaPeak measure_fp32_fma_peak_concurrent(int threads, int64_t iters = 20'000'000, int reps = 8);
FmaPeak measure_bf16_dot_peak_concurrent(int threads, int64_t iters = 20'000'000, int reps = 8);

}  // namespace dsv3
