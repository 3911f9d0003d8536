// FP8 GEMM accumulation precision (DeepSeek-V3 report §3.3.2, "Increasing Accumulation
// Precision"): the H800 tensor core keeps about 14 bits of the accumulator, which the report
// found gives a maximum relative error near 2% for K = 4096; promoting partial sums to FP32
// every 128 along K fixes it. This benchmark reproduces the comparison on the CPU, on E4M3
// operands quantized as in training (1×128 tiles of A and of B, scales from max-abs):
//   exact         double sum of the dequantized products (the reference)
//   limited       one accumulator of `acc_bits` significant bits (truncated after every
//                 addition) over the whole K (no promotion)
//   promoted      the same accumulator, emptied into FP32 every 128 along K
//   cpu_kernel    gemm_lowp_nt: FP32 accumulation, promotion every 128 (what training runs)
// Two input laws: "normal" N(0, 1) and "uniform" U[0, 1) (all products positive, so the
// accumulator grows through the whole K: the hard case for a short accumulator). Error metrics
// per output c = C[m, n]: max over outputs of |c − exact| / Σ_k |products| (relative to the
// magnitude summed) and, for "uniform", also max |c − exact| / |exact|. Prints JSON.
//
//   bench_fp8_accum [--m 64] [--n 64] [--k 512,1024,2048,4096,8192] [--acc-bits 14] [--seed 0]
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cpu/gemm_lowp.hpp"
#include "backend/cpu/quant_train.hpp"
#include "bench_util.hpp"
#include "core/dtype.hpp"
#include "core/rng.hpp"

using namespace dsv3;
using namespace dsv3::cpu;

namespace {

struct Errors {
  double vs_magnitude = 0, vs_value = 0;
};

Errors errors(const std::vector<float>& C, const std::vector<double>& ref,
              const std::vector<double>& mag) {
  Errors e;
  for (size_t i = 0; i < C.size(); ++i) {
    const double d = std::fabs(double(C[i]) - ref[i]);
    e.vs_magnitude = std::max(e.vs_magnitude, d / mag[i]);
    if (std::fabs(ref[i]) > 1e-3 * mag[i]) e.vs_value = std::max(e.vs_value, d / std::fabs(ref[i]));
  }
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t M = 64, N = 64;
  std::string ks = "512,1024,2048,4096,8192";
  int acc_bits = 14;
  uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc || a == "--help") {
      std::printf(
          "usage: bench_fp8_accum [--m 64] [--n 64] [--k 512,...] [--acc-bits 14] [--seed 0]\n");
      return a == "--help" ? 0 : 2;
    }
    const std::string v = argv[++i];
    if (a == "--m")
      M = std::stoll(v);
    else if (a == "--n")
      N = std::stoll(v);
    else if (a == "--k")
      ks = v;
    else if (a == "--acc-bits")
      acc_bits = std::stoi(v);
    else if (a == "--seed")
      seed = std::stoull(v);
    else {
      std::fprintf(stderr, "bench_fp8_accum: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  std::fprintf(stderr, "bench_fp8_accum: seed %llu\n", (unsigned long long)seed);
  bench::JsonWriter j;
  j.begin_object();
  j.field("bench", "fp8_accumulation");
  j.field("m", M);
  j.field("n", N);
  j.field("acc_bits", acc_bits);
  j.field("accumulator", "truncating (round toward zero) after every addition");
  j.field("errors", "percent: max over outputs of |C - exact| / sum|products| (vs_magnitude)");
  j.begin_array("runs");
  for (const char* law : {"normal", "uniform"})
    for (int K : bench::parse_int_list(ks)) {
      Rng rng(seed + uint64_t(K));
      std::vector<float> xa(size_t(M * K)), xb(size_t(N * K));
      for (auto& v : xa) v = law[0] == 'n' ? float(rng.normal()) : float(rng.uniform());
      for (auto& v : xb) v = law[0] == 'n' ? float(rng.normal()) : float(rng.uniform());
      const int64_t Kc = quant_tiles(K);
      std::vector<uint16_t> a(size_t(M * K)), b(size_t(N * K));
      std::vector<float> sa(size_t(M * Kc)), sb(size_t(N * Kc));
      fp8_rows(a.data(), K, sa.data(), xa.data(), K, M, K);
      fp8_rows(b.data(), K, sb.data(), xb.data(), K, N, K);
      std::vector<float> fa(a.size()), fb(b.size());
      for (size_t i = 0; i < a.size(); ++i) fa[i] = bf16_to_f32(a[i]);
      for (size_t i = 0; i < b.size(); ++i) fb[i] = bf16_to_f32(b[i]);
      std::vector<double> ref(size_t(M * N)), mag(ref.size());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double t = 0, g = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double p = double(fa[size_t(m * K + k)]) * fb[size_t(n * K + k)] *
                             sa[size_t(m * Kc + k / 128)] * sb[size_t(n * Kc + k / 128)];
            t += p;
            g += std::fabs(p);
          }
          ref[size_t(m * N + n)] = t;
          mag[size_t(m * N + n)] = g;
        }
      std::vector<float> limited(ref.size()), promoted(ref.size()), kernel(ref.size());
      gemm_fp8_emulated(limited.data(), M, N, K, fa.data(), sa.data(), fb.data(), sb.data(), 0,
                        acc_bits);
      gemm_fp8_emulated(promoted.data(), M, N, K, fa.data(), sa.data(), fb.data(), sb.data(), 128,
                        acc_bits);
      gemm_lowp_nt(kernel.data(), N, M, N, K, a.data(), K, b.data(), K, sa.data(), sb.data(),
                   false);
      const Errors el = errors(limited, ref, mag), ep = errors(promoted, ref, mag),
                   ek = errors(kernel, ref, mag);
      j.begin_object();
      j.field("inputs", law);
      j.field("k", K);
      j.field("limited_pct", 100 * el.vs_magnitude, 4);
      j.field("promoted_128_pct", 100 * ep.vs_magnitude, 4);
      j.field("cpu_kernel_pct", 100 * ek.vs_magnitude, 6);
      if (law[0] == 'u') {
        j.field("limited_vs_value_pct", 100 * el.vs_value, 4);
        j.field("promoted_128_vs_value_pct", 100 * ep.vs_value, 4);
      }
      j.end_object();
    }
  j.end_array();
  j.end_object();
  j.print();
  return 0;
}
