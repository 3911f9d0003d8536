// Shared benchmark helpers (header-only): the machine limits every benchmark reports beside its
// own numbers — memory bandwidth (read-only stream), FP32 FMA peak (core/fma_peak.hpp) and
// FP32/BF16 GEMM peak (oneDNN matmul with packed weights) — plus a timer and a tiny JSON writer.
#pragma once
// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers once they are inlined
// (a known false positive; src/backend/cpu/gemv.cpp does the same).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <dnnl.hpp>
#include <memory>
#include <string>
#include <vector>

#include "core/fma_peak.hpp"

namespace dsv3::bench {

class Timer {
 public:
  Timer() : t0_(std::chrono::steady_clock::now()) {}
  void reset() { t0_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

// Seconds from t to now.
inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// "1,2" -> {1, 2} (the --threads lists of the benchmarks).
inline std::vector<int> parse_int_list(const std::string& s) {
  std::vector<int> v;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    if (e > b) v.push_back(std::stoi(s.substr(b, e - b)));
    b = e + 1;
  }
  return v;
}

// The fastest of `reps` runs of fn(), in seconds.
template <typename Fn>
double best_seconds(int reps, Fn&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    Timer t;
    fn();
    best = std::min(best, t.seconds());
  }
  return best;
}

// Sets the OpenMP pool size for a scope (oneDNN follows omp_get_max_threads()).
class ScopedThreads {
 public:
  explicit ScopedThreads(int n) : old_(omp_get_max_threads()) {
    if (n > 0) omp_set_num_threads(n);
  }
  ~ScopedThreads() { omp_set_num_threads(old_); }

 private:
  int old_;
};

// Read-only bandwidth in GB/s (1e9 bytes/s) on `threads` threads: each pass sums one 64 MiB
// segment of a 512 MiB buffer (threads take contiguous parts), cycling through the segments so a
// pass reads what the last seven evicted from every cache. The limit is the best of `passes`
// passes: short passes keep it stable on a shared machine, where a long pass is likely to be
// preempted; the median pass is there for context (what a pass typically got at that moment).
// The buffer is made once, so a benchmark can probe again between its own rounds.
class BandwidthProbe {
 public:
  static constexpr size_t kSegments = 8;
  explicit BandwidthProbe(size_t bytes = size_t(512) << 20)
      : seg_(bytes / sizeof(float) / kSegments / 64 * 64),
        buf_(static_cast<float*>(std::aligned_alloc(64, seg_ * kSegments * sizeof(float))),
             &std::free) {
    float* p = buf_.get();
    const size_t n = seg_ * kSegments;
#pragma omp parallel for schedule(static)
    // Values that differ from page to page: with a periodic fill (i & 7) every page was
    // identical, and on this VM such pages were sometimes read at 1.5–3 GB/s (the host appears
    // to merge identical pages), which made the limit a tenth of the real one.
    for (size_t i = 0; i < n; ++i) p[i] = float((uint32_t(i) * 2654435761u) >> 29);
  }

  // Best and median pass, GB/s.
  struct Result {
    double best, median;
  };
  Result measure(int threads, int passes = 24) {
    std::vector<double> rates;
    volatile float sink = 0;
    for (int p = 0; p < passes; ++p) {
      const float* q = buf_.get() + (pass_++ % kSegments) * seg_;
      const size_t seg = seg_;
      float total = 0;
      Timer t;
#pragma omp parallel num_threads(threads) reduction(+ : total)
      {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const size_t b = seg / 64 * size_t(id) / size_t(nt) * 64;
        const size_t e = seg / 64 * size_t(id + 1) / size_t(nt) * 64;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t i = b; i < e; i += 64) {
          a0 = _mm512_add_ps(a0, _mm512_load_ps(q + i));
          a1 = _mm512_add_ps(a1, _mm512_load_ps(q + i + 16));
          a2 = _mm512_add_ps(a2, _mm512_load_ps(q + i + 32));
          a3 = _mm512_add_ps(a3, _mm512_load_ps(q + i + 48));
        }
        total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
      }
      rates.push_back(double(seg_ * sizeof(float)) / t.seconds() / 1e9);
      sink = total;
    }
    (void)sink;
    std::sort(rates.begin(), rates.end());
    return {rates.back(), rates[rates.size() / 2]};
  }
  double gbs(int threads, int passes = 24) {
    return measure(threads, passes).best;
  }

 private:
  size_t seg_;
  std::unique_ptr<float, decltype(&std::free)> buf_;
  size_t pass_ = 0;
};

inline double measure_memory_bandwidth_gbs(int threads) {
  return BandwidthProbe().gbs(threads);
}

// Median of a list of measurements (the upper middle one for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// FP32 FMA peak in GFLOP/s on `threads` threads: the library's register-only FMA probe
// (core/fma_peak.hpp), the same denominator as the MFU of `dsv3 train`.
inline double measure_fma_peak_gflops(int threads) {
  return measure_fp32_fma_peak(threads).flops / 1e9;
}

// GEMM peak in GFLOP/s on `threads` threads: a oneDNN matmul [M, K]·[K, N] → f32 with weights
// packed in its preferred layout (as linear_forward does), BF16 or FP32 inputs; the best of 5.
inline double measure_gemm_peak_gflops(bool bf16, int threads, int64_t M = 2048, int64_t N = 2048,
                                       int64_t K = 2048) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  ScopedThreads st(threads);
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  const dt in = bf16 ? dt::bf16 : dt::f32;
  dnnl::memory::desc a({M, K}, in, tag::ab), b({K, N}, in, tag::any), c({M, N}, dt::f32, tag::ab);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), eng);
  dnnl::matmul mm(pd);
  dnnl::memory am(a, eng), bm(pd.weights_desc(), eng), cm(c, eng);
  // Finite, non-denormal inputs: 1.0 in either encoding.
  auto fill = [&](dnnl::memory& m) {
    const size_t bytes = m.get_desc().get_size();
    if (bf16)
      std::fill_n(static_cast<uint16_t*>(m.get_data_handle()), bytes / 2, uint16_t(0x3f80));
    else
      std::fill_n(static_cast<float*>(m.get_data_handle()), bytes / 4, 1.0f);
  };
  fill(am);
  fill(bm);
  const double t = best_seconds(5, [&] {
    mm.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    s.wait();
  });
  return 2.0 * double(M) * double(N) * double(K) / t / 1e9;
}

// A minimal JSON writer for flat benchmark reports: objects, arrays, numbers and strings.
class JsonWriter {
 public:
  JsonWriter& begin_object(const char* key = nullptr) { return open(key, '{'); }
  JsonWriter& end_object() { return close('}'); }
  JsonWriter& begin_array(const char* key = nullptr) { return open(key, '['); }
  JsonWriter& end_array() { return close(']'); }
  JsonWriter& field(const char* key, double v, int precision = 2) {
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", precision, v);
    return raw(key, b);
  }
  JsonWriter& field(const char* key, int64_t v) { return raw(key, std::to_string(v)); }
  JsonWriter& field(const char* key, int v) { return field(key, int64_t(v)); }
  JsonWriter& field(const char* key, const std::string& v) { return raw(key, '"' + v + '"'); }
  JsonWriter& field(const char* key, const char* v) { return field(key, std::string(v)); }
  const std::string& str() const { return out_; }
  void print(std::FILE* f = stdout) const {
    std::fputs(out_.c_str(), f);
    std::fputc('\n', f);
    std::fflush(f);
  }

 private:
  void item(const char* key) {
    if (!first_.empty()) {
      if (!first_.back()) out_ += ',';
      first_.back() = false;
      out_ += '\n';
      out_.append(2 * first_.size(), ' ');
    }
    if (key) out_ += '"' + std::string(key) + "\": ";
  }
  JsonWriter& raw(const char* key, const std::string& v) {
    item(key);
    out_ += v;
    return *this;
  }
  JsonWriter& open(const char* key, char c) {
    item(key);
    out_ += c;
    first_.push_back(true);
    return *this;
  }
  JsonWriter& close(char c) {
    first_.pop_back();
    out_ += '\n';
    out_.append(2 * first_.size(), ' ');
    out_ += c;
    return *this;
  }
  std::string out_;
  std::vector<bool> first_;
};

}  // namespace dsv3::bench
