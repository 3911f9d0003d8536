// How fast a batched decode step streams its routed experts, beside plain reads of the same
// bytes: the MoE layers of a C-token decode step of the bench model's shape (hidden 1024, expert
// intermediate 512, BF16, 64 routed experts top-6, 2 shared experts), on weights placed as the
// model's (a huge-page copy), each layer's experts handed whole to the threads of a spin team as
// moe.cpp does. Variants, each over all layers (GB/s of routed-expert bytes; best and median of
// --reps sweeps; a sweep reads every layer's routed experts, 1.7 GB at 16 tokens, so nothing of
// one sweep is left in a cache for the next; the variants take turns within each round):
//   mlp        the experts' gate, up, SwiGLU and down (model::mlp_forward) per job, as decoding
//   mlp_shared the same with the shared experts' job first (M = C rows, the skinny GEMM)
//   read_jobs  each job a plain read of its expert's 3 matrices (the same jobs, no arithmetic)
//   read_all   one read of the whole sweep, split in two halves (bench_util's probe kernel)
// Prints JSON.
//
// usage: bench_expert_stream [--tokens 16] [--layers 11] [--reps 5]
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/parallel.hpp"
#include "model/mlp.hpp"

using namespace dsv3;

namespace {

constexpr int64_t D = 1024, F = 512, E = 64, K = 6, Fs = 1024;

struct Expert {
  model::MlpW<model::W<float>> w;
  const uint8_t* bytes[3];
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double read_bytes(const uint8_t* p, size_t n) {  // one thread, like timed_read's loop
  __m512i a0 = _mm512_setzero_si512(), a1 = a0;
  for (size_t k = 0; k + 128 <= n; k += 128) {
    _mm_prefetch(reinterpret_cast<const char*>(p + k + 4096), _MM_HINT_NTA);
    _mm_prefetch(reinterpret_cast<const char*>(p + k + 4096 + 64), _MM_HINT_NTA);
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + k));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + k + 64));
  }
  return double(_mm512_reduce_add_epi64(_mm512_xor_si512(a0, a1)));
}

}  // namespace

int main(int argc, char** argv) {
  int64_t C = 16, layers = 11, reps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc)
      C = std::stoll(argv[++i]);
    else if (a == "--layers" && i + 1 < argc)
      layers = std::stoll(argv[++i]);
    else if (a == "--reps" && i + 1 < argc)
      reps = std::stoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_expert_stream [--tokens 16] [--layers 11] [--reps 5]\n");
      return 1;
    }
  }
  // Every layer's 64 experts (3 MiB each) and its shared experts, on huge pages.
  const size_t mat = size_t(F * D) * 2, per_layer = size_t(E) * 3 * mat + 3 * size_t(Fs * D) * 2;
  const size_t bytes = size_t(layers) * per_layer, huge = size_t(2) << 20;
  const size_t mapped = (bytes + huge - 1) / huge * huge + huge;
  void* raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return 1;
  auto* base =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + huge - 1) / huge * huge);
  ::madvise(base, bytes, MADV_HUGEPAGE);
  // Small random BF16 values (a full-entropy fill would be NaNs and denormals).
  {
    auto* h = reinterpret_cast<uint16_t*>(base);
    const size_t n = bytes / 2;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      uint32_t z = uint32_t(i * 2654435761u);
      z ^= z >> 15;
      h[i] = uint16_t(0x3c00 | (z & 0x83ff));  // ±[2⁻⁷, 2⁻⁶)·(1 + m)
    }
  }
  std::vector<std::vector<Expert>> ex(static_cast<size_t>(layers));
  std::vector<model::MlpW<model::W<float>>> shared(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    uint8_t* p = base + size_t(l) * per_layer;
    for (int64_t e = 0; e < E; ++e) {
      Expert x;
      x.w.gate = cpu::LinearWeight({DType::BF16, F, D, p, nullptr}, cpu::Compute::BF16);
      x.w.up = cpu::LinearWeight({DType::BF16, F, D, p + mat, nullptr}, cpu::Compute::BF16);
      x.w.down = cpu::LinearWeight({DType::BF16, D, F, p + 2 * mat, nullptr}, cpu::Compute::BF16);
      for (int j = 0; j < 3; ++j) x.bytes[j] = p + size_t(j) * mat;
      ex[size_t(l)].push_back(std::move(x));
      p += 3 * mat;
    }
    const size_t sm = size_t(Fs * D) * 2;
    shared[size_t(l)].gate =
        cpu::LinearWeight({DType::BF16, Fs, D, p, nullptr}, cpu::Compute::BF16);
    shared[size_t(l)].up =
        cpu::LinearWeight({DType::BF16, Fs, D, p + sm, nullptr}, cpu::Compute::BF16);
    shared[size_t(l)].down =
        cpu::LinearWeight({DType::BF16, D, Fs, p + 2 * sm, nullptr}, cpu::Compute::BF16);
  }
  // Routing: C tokens × top-6 of 64, uniform, per layer; rows per expert.
  std::mt19937_64 rng(7);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> jobs(
      static_cast<size_t>(layers));  // (expert, rows)
  int64_t distinct = 0;
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<int64_t> rows(E, 0);
    for (int64_t t = 0; t < C; ++t) {
      std::vector<int64_t> ids(E);
      for (int64_t e = 0; e < E; ++e) ids[size_t(e)] = e;
      std::shuffle(ids.begin(), ids.end(), rng);
      for (int64_t k = 0; k < K; ++k) rows[size_t(ids[size_t(k)])]++;
    }
    for (int64_t e = 0; e < E; ++e)
      if (rows[size_t(e)] > 0) jobs[size_t(l)].push_back({e, rows[size_t(e)]});
    distinct += int64_t(jobs[size_t(l)].size());
  }
  const double routed_bytes = double(distinct) * 3.0 * double(mat);
  std::vector<float> x(size_t(C * Fs), 0.01f), sg(size_t(C * Fs)), su(sg.size()), sa(sg.size()),
      out(size_t(C * D));
  const int nt = region_threads();
  // Per thread scratch for the routed experts (M ≤ C rows).
  std::vector<std::vector<float>> g(static_cast<size_t>(nt)), u(g), a(g), y(g);
  for (int t = 0; t < nt; ++t) {
    g[size_t(t)].resize(size_t(C * F));
    u[size_t(t)].resize(size_t(C * F));
    a[size_t(t)].resize(size_t(C * F));
    y[size_t(t)].resize(size_t(C * D));
  }
  std::vector<double> sinks(size_t(nt) * 8, 0.0);
  auto run = [&](const std::string& v) {
    const double t0 = now();
    spin_team([&] {
      for (int64_t l = 0; l < layers; ++l) {
        const auto& js = jobs[size_t(l)];
        const bool sh = v == "mlp_shared";
        const int64_t n = int64_t(js.size()) + (sh ? 1 : 0);
        if (v == "read_all") continue;
        parallel_jobs(n, [&](int64_t j, int t) {
          if (sh && j == 0) {
            model::mlp_forward(out.data(), sg.data(), su.data(), sa.data(), x.data(), C,
                               shared[size_t(l)]);
            return;
          }
          const auto& [e, m] = js[size_t(j - (sh ? 1 : 0))];
          const Expert& xe = ex[size_t(l)][size_t(e)];
          if (v == "read_jobs") {
            double s = 0;
            for (int q = 0; q < 3; ++q) s += read_bytes(xe.bytes[q], mat);
            sinks[size_t(t) * 8] += s;
          } else {
            model::mlp_forward(y[size_t(t)].data(), g[size_t(t)].data(), u[size_t(t)].data(),
                               a[size_t(t)].data(), x.data(), m, xe.w);
          }
        });
      }
    });
    if (v == "read_all") {
      // The same bytes as one sweep (the routed experts' share of each layer, back to back).
      double s = 0;
      for (int64_t l = 0; l < layers; ++l)
        s += bench::detail::timed_read(base + size_t(l) * per_layer,
                                       jobs[size_t(l)].size() * 3 * mat, nt);
      return routed_bytes / s / 1e9;
    }
    return routed_bytes / (now() - t0) / 1e9;
  };
  // A 64 MiB read of the buffer's far end between sweeps (on top of each sweep's 1.7 GB).
  const std::vector<std::string> variants = {"mlp", "mlp_shared", "read_jobs", "read_all"};
  std::vector<std::vector<double>> r(variants.size());
  for (int64_t rep = 0; rep < reps; ++rep)
    for (size_t i = 0; i < variants.size(); ++i) {
      bench::detail::timed_read(base + bytes - (size_t(64) << 20), size_t(64) << 20, nt);
      r[i].push_back(run(variants[i]));
    }
  std::printf("{\"tokens\": %lld, \"layers\": %lld, \"threads\": %d, \"distinct_per_layer\": %.1f",
              static_cast<long long>(C), static_cast<long long>(layers), nt,
              double(distinct) / double(layers));
  for (size_t i = 0; i < variants.size(); ++i) {
    std::sort(r[i].begin(), r[i].end());
    std::printf(", \"%s_gbs\": [%.1f, %.1f]", variants[i].c_str(), r[i].back(),
                r[i][r[i].size() / 2]);
  }
  std::printf("}\n");
  ::munmap(raw, mapped);
  return 0;
}
