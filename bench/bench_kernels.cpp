// Kernel benchmark: linear_forward against the machine limits measured in the same run.
//   (a) read-only memory bandwidth, (b) FP32 and BF16 GEMM peak (oneDNN, packed weights),
//   (c) decode GEMV (M = 1) on BF16 / FP8 e4m3 (both computes) / F32 weights: GB/s of stored
//       weight bytes and % of (a); each timed call starts with the weight evicted from the caches
//       (a 256 MiB stream in between), as in decode where every weight is read once per token,
//   (d) batched decode (M = 2..32, Compute::BF16, BF16 / FP8 weights): each path linear_forward
//       can take (GEMV, skinny BF16 GEMM, oneDNN GEMM), cold weights as in (c),
//   (e) prefill GEMM (M = 512, and M = 48 on expert shapes; Compute::BF16): GFLOP/s and % of the
//       BF16 peak; FP8 also against oneDNN on a packed BF16 copy (the route before 2026-12-07).
// Prints JSON.
//
//   bench_kernels [--threads 2 | --threads 1,2] [--reps 15] [--only decode_batch]
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "bench_util.hpp"
#include "core/dtype.hpp"
#include "core/fma_peak.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"

using namespace dsv3;

namespace {

struct Shape {
  int64_t out, in;
};
const Shape kShapes[] = {{2816, 1024}, {1024, 2816}, {32000, 1024}};

// A random stored weight (finite values; FP8 codes avoid NaN) with block scales for FP8.
struct Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  cpu::WeightView view;
};

Stored make_weight(DType dt, Shape s, uint64_t seed) {
  Stored w;
  Rng rng(seed);
  const size_t n = size_t(s.out * s.in);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal()) * (dt == DType::F8_E4M3 ? 40.0f : 0.05f);
  w.bytes.resize(n * dtype_size(dt));
  from_f32(w.bytes.data(), v.data(), dt, n);
  if (dt == DType::F8_E4M3)
    w.scale.assign(size_t((s.out + 127) / 128 * ((s.in + 127) / 128)), 1e-3f);
  w.view = {dt, s.out, s.in, w.bytes.data(), w.scale.empty() ? nullptr : w.scale.data()};
  return w;
}

// Streams a buffer larger than the last-level cache so the next call reads from memory.
class CacheFlusher {
 public:
  // Distinct page contents (see BandwidthProbe): identical pages may be merged by the host, and
  // a stream over one shared page evicts nothing.
  CacheFlusher() : buf_(size_t(256) << 20 >> 3) {
    for (size_t i = 0; i < buf_.size(); ++i) buf_[i] = i * 0x9E3779B97F4A7C15ull;
  }
  void flush() {
    uint64_t s = 0;
#pragma omp parallel for reduction(+ : s)
    for (size_t i = 0; i < buf_.size(); i += 8) s += buf_[i];
    sink_ = s;
  }

 private:
  std::vector<uint64_t> buf_;
  volatile uint64_t sink_ = 0;
};

// The old prefill route, for comparison: oneDNN's BF16 matmul on a copy of the weight
// dequantized to BF16 and packed at setup (weights descriptor "any"), x rounded to BF16 per call
// as linear_forward does. Returns the best seconds of `reps` calls (setup not timed), warm and
// with the caches flushed before each call.
std::pair<double, double> packed_bf16_seconds(const cpu::WeightView& v, const std::vector<float>& x,
                                              int64_t M, std::vector<float>& y, int reps,
                                              CacheFlusher& flusher) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const int64_t N = v.rows, K = v.cols;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream st(eng);
  const std::vector<float> wf = cpu::dequantize(v);
  std::vector<uint16_t> wb(wf.size()), xb(x.size());
  from_f32(wb.data(), wf.data(), DType::BF16, wf.size());
  dnnl::memory::desc a({M, K}, dt::bf16, tag::ab), b({K, N}, dt::bf16, tag::any),
      c({M, N}, dt::f32, tag::ab);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), eng);
  dnnl::matmul mm(pd);
  dnnl::memory plain({{K, N}, dt::bf16, tag::ba}, eng, wb.data()), packed(pd.weights_desc(), eng);
  dnnl::reorder(plain, packed).execute(st, plain, packed);
  st.wait();
  dnnl::memory am(a, eng, xb.data()), cm(c, eng, y.data());
  auto run = [&] {
    from_f32(xb.data(), x.data(), DType::BF16, x.size());
    mm.execute(st, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, packed}, {DNNL_ARG_DST, cm}});
    st.wait();
  };
  run();
  double cold = 1e30;
  for (int r = 0; r < reps; ++r) {
    flusher.flush();
    bench::Timer t;
    run();
    cold = std::min(cold, t.seconds());
  }
  return {bench::best_seconds(reps, run), cold};
}

const char* dtype_label(DType d) {
  return d == DType::F32 ? "F32" : d == DType::BF16 ? "BF16" : "F8_E4M3";
}

}  // namespace

int main(int argc, char** argv) {
  std::string threads_s = std::to_string(num_threads());
  int reps = 15;
  std::string only;
  const char* usage =
      "usage: bench_kernels [--threads N[,N...]] [--reps R] [--only gemv_m1|decode_batch|prefill]\n"
      "  Times linear_forward's kernels (decode GEMV, batched decode, prefill GEMM) against the\n"
      "  read bandwidth and FMA/BF16 peaks measured in the same run; prints JSON on stdout.\n"
      "  --threads  thread counts to run, comma-separated (default: the OpenMP default)\n"
      "  --reps     timed repetitions per figure (default 15)\n"
      "  --only     one section (the peaks it does not need are skipped)\n";
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (a != "--threads" && a != "--reps" && a != "--only") {
      std::fprintf(stderr, "bench_kernels: unknown flag %s\n%s", a.c_str(), usage);
      return 2;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_kernels: %s needs a value\n%s", a.c_str(), usage);
      return 2;
    }
    if (a == "--threads")
      threads_s = argv[i + 1];
    else if (a == "--reps")
      reps = std::stoi(argv[i + 1]);
    else  // --only: one section, gemv_m1, decode_batch or prefill (peaks skipped)
      only = argv[i + 1];
  }
  if (!only.empty() && only != "gemv_m1" && only != "decode_batch" && only != "prefill") {
    std::fprintf(stderr, "bench_kernels: --only %s is not a section\n%s", only.c_str(), usage);
    return 2;
  }
  try {
    CacheFlusher flusher;
    bench::JsonWriter j;
    j.begin_object().field("benchmark", "kernels").begin_array("runs");
    for (int nt : bench::parse_int_list(threads_s)) {
      set_num_threads(nt);
      const double bw = bench::measure_memory_bandwidth_gbs(nt);
      const bool all = only.empty();
      const double peak_f32 = all ? bench::measure_gemm_peak_gflops(false, nt) : 0.0;
      const double peak_bf16 =
          all || only == "prefill" ? bench::measure_gemm_peak_gflops(true, nt) : 0.0;
      // The limit of the prefill GEMMs: a register-only vdpbf16ps loop (oneDNN's own 2048² GEMM
      // rate above is a peer, which a packed GEMM may beat).
      const double dot_bf16 =
          all || only == "prefill" ? measure_bf16_dot_peak(nt).flops / 1e9 : 0.0;
      j.begin_object()
          .field("threads", nt)
          .field("memory_bandwidth_gbs", bw, 1)
          .field("f32_gemm_peak_gflops", peak_f32, 1)
          .field("bf16_gemm_peak_gflops", peak_bf16, 1)
          .field("bf16_dot_peak_gflops", dot_bf16, 1);
      j.begin_array("gemv_m1");
      // FP8 twice: Compute::BF16 takes the BF16-arithmetic GEMV (gemv_fp8_bf16), Compute::F32
      // the exact FP32 one (gemv_fp8); BF16 and F32 weights run the same kernel under either.
      const std::pair<DType, cpu::Compute> kinds[] = {{DType::BF16, cpu::Compute::BF16},
                                                      {DType::F8_E4M3, cpu::Compute::BF16},
                                                      {DType::F8_E4M3, cpu::Compute::F32},
                                                      {DType::F32, cpu::Compute::F32}};
      if (all || only == "gemv_m1")
        for (const auto& [dt, compute] : kinds)
          for (const Shape& s : kShapes) {
            const Stored w = make_weight(dt, s, 7);
            const cpu::LinearWeight lw(w.view, compute);
            std::vector<float> x(size_t(s.in), 0.01f), y(size_t(s.out));
            double best = 1e30;
            for (int r = 0; r < reps; ++r) {
              flusher.flush();
              bench::Timer t;
              cpu::linear_forward(y.data(), x.data(), 1, lw);
              best = std::min(best, t.seconds());
            }
            const double gbs = double(lw.stored_bytes()) / best / 1e9;
            j.begin_object()
                .field("dtype", dtype_label(dt))
                .field("compute", compute == cpu::Compute::BF16 ? "bf16" : "f32")
                .field("out", s.out)
                .field("in", s.in)
                .field("us", best * 1e6, 1)
                .field("weight_gbs", gbs, 1)
                .field("pct_of_bandwidth", 100.0 * gbs / bw, 1)
                .end_object();
          }
      j.end_array();
      // Batched decode (Compute::BF16, M = 2..32): each path linear_forward can take, cold
      // weights as in gemv_m1; `path` marks linear_forward's own choice.
      j.begin_array("decode_batch_bf16");
      if (all || only == "decode_batch")
        for (DType dt : {DType::BF16, DType::F8_E4M3})
          for (const Shape& s : kShapes) {
            const Stored w = make_weight(dt, s, 9);
            const cpu::LinearWeight lw(w.view, cpu::Compute::BF16);
            for (int64_t M : {2, 3, 4, 8, 16, 32}) {
              std::vector<float> x(size_t(M * s.in), 0.01f), y(size_t(M * s.out));
              j.begin_object()
                  .field("dtype", dtype_label(dt))
                  .field("out", s.out)
                  .field("in", s.in);
              j.field("m", M);
              const std::pair<cpu::LinearPath, const char*> paths[] = {
                  {cpu::LinearPath::Gemv, "gemv"},
                  {cpu::LinearPath::Skinny, "skinny"},
                  {cpu::LinearPath::Gemm, "gemm"}};
              for (const auto& [p, name] : paths) {
                cpu::linear_forward_path(y.data(), x.data(), M, lw, false, p);  // primitive, touch
                double best = 1e30;
                for (int r = 0; r < reps; ++r) {
                  flusher.flush();
                  bench::Timer t;
                  cpu::linear_forward_path(y.data(), x.data(), M, lw, false, p);
                  best = std::min(best, t.seconds());
                }
                j.field((std::string(name) + "_us").c_str(), best * 1e6, 1);
                j.field((std::string(name) + "_weight_gbs").c_str(),
                        double(lw.stored_bytes()) / best / 1e9, 1);
              }
              const cpu::LinearPath chosen = cpu::linear_path(M, lw);
              j.field("path", chosen == cpu::LinearPath::Gemv     ? "gemv"
                              : chosen == cpu::LinearPath::Skinny ? "skinny"
                                                                  : "gemm");
              j.end_object();
            }
          }
      j.end_array();
      // Prefill GEMMs (Compute::BF16): the bench shapes at M = 512 and an expert's at M = 48
      // (a 512-token prompt routes 48 tokens to each of 64 experts on average); FP8 also beside
      // the packed BF16 copy it was multiplied from until 2026-12-07 (packed_bf16_seconds).
      j.begin_array("prefill_bf16");
      // FP8 also at the M between, where linear_path switches from gemm_fp8_bf16 ("gemm") to
      // the weight packed per call for oneDNN ("fp8_packed"): both timed warm and cold.
      struct PrefillCase {
        Shape s;
        int64_t M;
        bool fp8_only;  // the M sweep
      };
      const PrefillCase prefill_cases[] = {
          {kShapes[0], 512, false}, {kShapes[1], 512, false}, {kShapes[2], 512, false},
          {{512, 1024}, 48, false}, {{1024, 512}, 48, false}, {kShapes[0], 128, true},
          {kShapes[0], 256, true},  {{512, 1024}, 96, true},  {{512, 1024}, 128, true},
          {{512, 1024}, 192, true}, {{512, 1024}, 256, true}, {{1024, 512}, 128, true}};
      if (all || only == "prefill")
        for (DType dt : {DType::BF16, DType::F8_E4M3})
          for (const auto& [s, M, fp8_only] : prefill_cases) {
            if (fp8_only && dt != DType::F8_E4M3) continue;
            const Stored w = make_weight(dt, s, 8);
            const cpu::LinearWeight lw(w.view, cpu::Compute::BF16);
            // Random activations: constant ones ran both routes ~15% faster (less switching
            // power, a higher clock), which real prefill does not see.
            std::vector<float> x(size_t(M * s.in)), y(size_t(M * s.out));
            Rng xr(11);
            for (auto& v : x) v = float(xr.normal());
            cpu::linear_forward(y.data(), x.data(), M, lw);  // primitive creation, first touch
            const double t = bench::best_seconds(
                std::max(3, reps / 3), [&] { cpu::linear_forward(y.data(), x.data(), M, lw); });
            const double flop = 2.0 * double(M) * double(s.out) * double(s.in);
            j.begin_object()
                .field("dtype", dtype_label(dt))
                .field("m", M)
                .field("out", s.out)
                .field("in", s.in)
                .field("ms", t * 1e3, 3)
                .field("gflops", flop / t / 1e9, 1)
                .field("pct_of_bf16_dot_peak", 100.0 * flop / t / 1e9 / dot_bf16, 1);
            if (dt == DType::F8_E4M3) {
              const cpu::LinearPath chosen = cpu::linear_path(M, lw);
              j.field("path", chosen == cpu::LinearPath::Fp8Packed ? "fp8_packed" : "gemm");
              for (auto [p, name] : {std::pair{cpu::LinearPath::Gemm, "gemm"},
                                     std::pair{cpu::LinearPath::Fp8Packed, "fp8_packed"}}) {
                auto run = [&] { cpu::linear_forward_path(y.data(), x.data(), M, lw, false, p); };
                run();
                const double tw = bench::best_seconds(std::max(3, reps / 3), run);
                double tc = 1e30;
                for (int r = 0; r < std::max(3, reps / 3); ++r) {
                  flusher.flush();
                  bench::Timer tm;
                  run();
                  tc = std::min(tc, tm.seconds());
                }
                j.field((std::string(name) + "_gflops").c_str(), flop / tw / 1e9, 1)
                    .field((std::string(name) + "_cold_gflops").c_str(), flop / tc / 1e9, 1);
              }
              const auto [tp, tpc] =
                  packed_bf16_seconds(w.view, x, M, y, std::max(3, reps / 3), flusher);
              j.field("packed_bf16_copy_ms", tp * 1e3, 3)
                  .field("packed_bf16_copy_gflops", flop / tp / 1e9, 1)
                  .field("packed_bf16_copy_cold_gflops", flop / tpc / 1e9, 1)
                  .field("speed_vs_packed_copy", tp / t, 3);
            }
            j.end_object();
          }
      j.end_array();
      j.end_object();
    }
    j.end_array().end_object().print();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kernels: %s\n", e.what());
    return 1;
  }
  return 0;
}
