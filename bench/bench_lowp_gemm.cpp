// The three GEMMs of a training linear layer (Fprop y = x·Wᵀ, Dgrad dx = dy·W, Wgrad
// dW += dyᵀ·x) in FP32 (oneDNN sgemm), BF16 and FP8 (backend/cpu/linear_lowp.hpp: quantization
// of the operands included), and the bare low-precision GEMM kernel (gemm_lowp_nt, operands
// already quantized), for one shape M tokens × out × in. GFLOP/s beside the FP32 FMA and BF16
// dot peaks measured in the same run. Prints JSON.
//
//   bench_lowp_gemm [--m 2048] [--out 512] [--in 192] [--threads 2] [--reps 20] [--cpu-time]
// --cpu-time times by process CPU time (meaningful on 1 thread when other jobs share the cores).
#include <omp.h>

#include <time.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cpu/gemm_lowp.hpp"
#include "backend/cpu/linear.hpp"
#include "backend/cpu/linear_lowp.hpp"
#include "backend/cpu/quant_train.hpp"
#include "bench_util.hpp"
#include "core/fma_peak.hpp"
#include "core/rng.hpp"

using namespace dsv3;
using namespace dsv3::cpu;

namespace {

bool g_cpu_time = false;  // --cpu-time: process CPU time instead of wall time (a shared machine)

double now_s() {
  if (g_cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
double best_seconds(int reps, F&& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    f();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t M = 2048, out = 512, in = 192;
  int threads = 2, reps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cpu-time") {
      g_cpu_time = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_lowp_gemm: %s needs a value\n", a.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (a == "--m")
      M = std::stoll(v);
    else if (a == "--out")
      out = std::stoll(v);
    else if (a == "--in")
      in = std::stoll(v);
    else if (a == "--threads")
      threads = std::stoi(v);
    else if (a == "--reps")
      reps = std::stoi(v);
    else {
      std::fprintf(stderr, "bench_lowp_gemm: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  bench::ScopedThreads st(threads);
  Rng rng(1);
  std::vector<float> W(size_t(out * in)), x(size_t(M * in)), dy(size_t(M * out)),
      y(size_t(M * out)), dx(size_t(M * in)), dW(W.size());
  for (auto& v : W) v = float(0.05 * rng.normal());
  for (auto& v : x) v = float(rng.normal());
  for (auto& v : dy) v = float(1e-3 * rng.normal());
  const double flops = 2.0 * double(M) * double(out) * double(in);
  const FmaPeak f32 = measure_fp32_fma_peak(threads), bf = measure_bf16_dot_peak(threads);
  bench::JsonWriter j;
  j.begin_object();
  j.field("bench", "lowp_gemm");
  j.field("m", M);
  j.field("out", out);
  j.field("in", in);
  j.field("threads", threads);
  j.field("fp32_fma_peak_gflops", f32.flops / 1e9, 1);
  j.field("bf16_dot_peak_gflops", bf.flops / 1e9, 1);
  j.begin_array("runs");
  LinearWeight lin({DType::F32, out, in, W.data(), nullptr}, Compute::F32);
  for (Precision p : {Precision::F32, Precision::BF16, Precision::FP8}) {
    LowpWeight lw;
    double refresh = 0;
    if (p != Precision::F32) {
      refresh = best_seconds(reps, [&] { lw.refresh(W.data(), out, in, p); });
      lin.set_lowp(&lw);
    } else {
      lin.set_lowp(nullptr);
    }
    const double fprop = best_seconds(reps, [&] { linear_forward(y.data(), x.data(), M, lin); });
    const double dgrad =
        best_seconds(reps, [&] { linear_backward_input(dx.data(), dy.data(), M, lin); });
    WgradPrecision scope(p);
    const double wgrad = best_seconds(
        reps, [&] { linear_backward_weight(dW.data(), dy.data(), x.data(), M, in, out); });
    j.begin_object();
    j.field("precision", precision_name(p));
    j.field("fprop_gflops", flops / fprop / 1e9, 1);
    j.field("dgrad_gflops", flops / dgrad / 1e9, 1);
    j.field("wgrad_gflops", flops / wgrad / 1e9, 1);
    j.field("weight_refresh_us", refresh * 1e6, 1);
    if (p != Precision::F32) {
      // The bare kernel on pre-quantized Fprop operands.
      const int64_t lda = lowp_pad_k(in);
      std::vector<uint16_t> a(size_t(M * lda));
      std::vector<float> sa(size_t(M * quant_tiles(in)));
      double quant = 0;
      if (p == Precision::BF16)
        quant = best_seconds(reps, [&] { bf16_rows(a.data(), lda, x.data(), in, M, in); });
      else
        quant =
            best_seconds(reps, [&] { fp8_rows(a.data(), lda, sa.data(), x.data(), in, M, in); });
      const bool sc = p == Precision::FP8;
      const double kern = best_seconds(reps, [&] {
        gemm_lowp_nt(y.data(), out, M, out, in, a.data(), lda, lw.w.data(), lda,
                     sc ? sa.data() : nullptr, sc ? lw.sw.data() : nullptr, false);
      });
      j.field("kernel_fprop_gflops", flops / kern / 1e9, 1);
      j.field("quantize_x_us", quant * 1e6, 1);
    }
    j.end_object();
  }
  j.end_array();
  j.end_object();
  j.print();
  return 0;
}
