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

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <memory>
#include <stdexcept>
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

namespace detail {

// Full-entropy bytes: word i of the buffer is splitmix64(seed + i), so no two pages are alike and
// none compresses (a host that merges or compresses identical pages cannot make a probe slow or
// fast). Filled on all threads.
inline void fill_random(uint64_t* p, size_t words, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < words; ++i) {
    uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    p[i] = z ^ (z >> 31);
  }
}

// Reads [p, p + bytes) once on `threads` threads (contiguous parts, 256 bytes per iteration into
// four XOR accumulators: integer work, so random bit patterns cost no floating-point assists),
// with the non-temporal prefetch 4 KiB ahead that the GEMV kernels use on the weights
// (src/backend/cpu/gemv.cpp), so a probe reads memory the way decode does at its best; returns
// the seconds it took. bytes is a multiple of 256 and p 64-byte aligned.
inline double timed_read(const uint8_t* p, size_t bytes, int threads) {
  volatile uint64_t sink = 0;
  uint64_t total = 0;
  const size_t blocks = bytes / 256;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(^ : total)
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const size_t b = blocks * size_t(id) / size_t(nt), e = blocks * size_t(id + 1) / size_t(nt);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t k = b; k < e; ++k) {
      const uint8_t* q = p + k * 256;
      for (int l = 0; l < 256; l += 64)
        _mm_prefetch(reinterpret_cast<const char*>(q + 4096 + l), _MM_HINT_NTA);
      a0 = _mm512_xor_si512(a0, _mm512_load_si512(q));
      a1 = _mm512_xor_si512(a1, _mm512_load_si512(q + 64));
      a2 = _mm512_xor_si512(a2, _mm512_load_si512(q + 128));
      a3 = _mm512_xor_si512(a3, _mm512_load_si512(q + 192));
    }
    total ^= uint64_t(_mm512_reduce_add_epi64(
        _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3))));
  }
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  sink = total;
  (void)sink;
  return t;
}

}  // namespace detail

// The plain read bandwidth in GB/s (1e9 bytes/s) on `threads` threads: an ordinary allocation
// (4 KiB pages) of full-entropy data; each pass reads one 64 MiB segment of a 512 MiB buffer,
// cycling through the segments so a pass reads what the last seven evicted from every cache. The
// limit is the best of `passes` passes (short passes: the machine's best moment); the median pass
// is there for context. The buffer is made once, so a benchmark can probe again between rounds.
class BandwidthProbe {
 public:
  static constexpr size_t kSegments = 8;
  explicit BandwidthProbe(size_t bytes = size_t(512) << 20)
      : seg_(bytes / kSegments / 256 * 256),
        buf_(static_cast<uint8_t*>(std::aligned_alloc(64, seg_ * kSegments)), &std::free) {
    // Until 2026-12-07 the fill was periodic small floats (the same few values on every page).
    detail::fill_random(reinterpret_cast<uint64_t*>(buf_.get()), seg_ * kSegments / 8, 1);
  }

  // Best and median pass, GB/s.
  struct Result {
    double best, median;
  };
  Result measure(int threads, int passes = 24) {
    std::vector<double> rates;
    for (int p = 0; p < passes; ++p) {
      const uint8_t* q = buf_.get() + (pass_++ % kSegments) * seg_;
      rates.push_back(double(seg_) / detail::timed_read(q, seg_, threads) / 1e9);
    }
    std::sort(rates.begin(), rates.end());
    return {rates.back(), rates[rates.size() / 2]};
  }
  double gbs(int threads, int passes = 24) { return measure(threads, passes).best; }

 private:
  size_t seg_;
  std::unique_ptr<uint8_t, decltype(&std::free)> buf_;
  size_t pass_ = 0;
};

// The sustained read bandwidth of memory placed like the model weights (io/file.cpp's
// huge-page copy): anonymous memory from a 2 MiB boundary, advised MADV_HUGEPAGE, full-entropy
// data, at least as large as the weights, and read whole in each pass: a pass is a sustained
// sweep, not a short burst, and no part of it can come from a cache. measure() takes one pass;
// a benchmark interleaves passes with its own rounds.
class HugePageProbe {
 public:
  explicit HugePageProbe(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    bytes_ = (bytes + kHuge - 1) / kHuge * kHuge;
    void* raw = ::mmap(nullptr, bytes_ + kHuge, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) throw std::runtime_error("HugePageProbe: mmap failed");
    const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t a = (r + kHuge - 1) / kHuge * kHuge;
    if (a > r) ::munmap(raw, a - r);
    const size_t tail = (r + bytes_ + kHuge) - (a + bytes_);
    if (tail > 0) ::munmap(reinterpret_cast<void*>(a + bytes_), tail);
    p_ = reinterpret_cast<uint8_t*>(a);
    advised_ = ::madvise(p_, bytes_, MADV_HUGEPAGE) == 0;
    detail::fill_random(reinterpret_cast<uint64_t*>(p_), bytes_ / 8, 2);
  }
  ~HugePageProbe() { ::munmap(p_, bytes_); }
  HugePageProbe(const HugePageProbe&) = delete;
  HugePageProbe& operator=(const HugePageProbe&) = delete;

  // GB/s of one read of the whole buffer.
  double measure(int threads) {
    return double(bytes_) / detail::timed_read(p_, bytes_, threads) / 1e9;
  }
  size_t bytes() const { return bytes_; }
  bool advised() const { return advised_; }
  // Share of the buffer the kernel backs with huge pages (AnonHugePages of its mapping in
  // /proc/self/smaps); -1 when it cannot be read.
  double huge_page_fraction() const {
    std::FILE* f = std::fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    bool in = false;
    double huge = -1;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p_);
    while (std::fgets(line, sizeof line, f)) {
      unsigned long b = 0, e = 0;
      if (std::sscanf(line, "%lx-%lx ", &b, &e) == 2) {  // a mapping's header line
        in = b <= lo && lo < e;
        continue;
      }
      unsigned long kb = 0;
      if (in && std::sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) {
        huge = double(kb) * 1024.0 / double(bytes_);
        break;
      }
    }
    std::fclose(f);
    return huge;
  }

 private:
  uint8_t* p_ = nullptr;
  size_t bytes_ = 0;
  bool advised_ = false;
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
