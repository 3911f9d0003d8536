// linear.hpp on the CPU: small M (decode) runs the AVX-512 kernels of gemv.cpp on the stored
// weight; large M runs a oneDNN matmul (brgemm) on a copy of the weight packed once, at
// construction, in the layout oneDNN prefers for it.
//
// Packed copies (the memory cost, reported by LinearWeight::extra_bytes()):
//   Compute::BF16, any storage  → BF16 packed [in, out]: 2 bytes per parameter (an FP8 weight is
//                                 dequantized once to FP32, then rounded to BF16).
//   Compute::F32, BF16 or FP8   → FP32 packed: 4 bytes per parameter.
//   Compute::F32, F32 storage   → none: dnnl_sgemm reads the stored weight.
// Primitives: a matmul primitive depends on (M, N, K, dtype, accumulate), not on the weight, so
// one process-wide cache serves every LinearWeight of a shape. M is an exact key because the
// runtime-M primitive (DNNL_RUNTIME_DIM_VAL) falls back to gemm:jit without packed weights and
// measured 10–35% slower than brgemm at M = 16..512 on BF16.
#include "backend/cpu/linear.hpp"

#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>

#include <dnnl.hpp>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "backend/cpu/gemv.hpp"
#include "backend/cpu/linear_lowp.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"

namespace dsv3::cpu {
namespace {

using dnnl::memory;
using mdt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// Rows up to which linear_forward takes the GEMV path. Measured on 1 thread with cold weights
// (2816×1024 and 1024×2816): FP8 GEMV beats BF16 brgemm up to M = 2, BF16 GEMV ties it at M ≤ 2,
// and from M = 3 brgemm wins (the GEMV does FP32 FMAs, half the BF16 rate, and re-decodes the
// weight per 4 activation rows). FP32 GEMV vs packed FP32 brgemm crosses at the same M.
constexpr int64_t kGemvMaxM_BF16 = 2;
constexpr int64_t kGemvMaxM_F32 = 2;
// The packed layout is the one brgemm picks for this M; primitives for other M accept it.
constexpr int64_t kPackRefM = 256;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
// Streams are cheap and not meant to be shared between threads.
dnnl::stream& thread_stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

// oneDNN fixes a primitive's thread count when it is created (omp_get_max_threads() then), so
// the count is part of the key: a primitive made on 1 thread would run on 1 thread forever.
struct PrimKey {
  int64_t M, N, K;
  mdt dt;
  bool acc;
  int threads;
  bool operator==(const PrimKey&) const = default;
};
struct PrimKeyHash {
  size_t operator()(const PrimKey& k) const {
    size_t h = std::hash<int64_t>()(k.M);
    h = h * 1000003u ^ std::hash<int64_t>()(k.N);
    h = h * 1000003u ^ std::hash<int64_t>()(k.K);
    return (h * 31u + size_t(k.dt) * 2u + size_t(k.acc)) * 257u + size_t(k.threads);
  }
};

// A cached matmul and the scratchpad bytes it needs. Primitives run with a user scratchpad:
// in oneDNN's default "library" mode the scratchpad is shared between primitives unless the
// library was built with DNNL_ENABLE_CONCURRENT_EXEC (Debian's is not), so two threads executing
// matmuls at once overwrote each other's scratch (Linear.ConcurrentCalls failed ~15% of runs).
struct CachedMatmul {
  dnnl::matmul prim;
  size_t scratch_bytes = 0;
};

class PrimCache {
 public:
  // The matmul for x[M, K] (dt) · W(packed as wmd) → y[M, N] f32, with y += when acc.
  const CachedMatmul& get(const PrimKey& k, const memory::desc& wmd) {
    {
      std::shared_lock lock(mu_);
      auto it = map_.find(k);
      if (it != map_.end()) return it->second;
    }
    // Created outside the lock (~0.3 ms); a concurrent creator of the same key is harmless.
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (k.acc) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    memory::desc src({k.M, k.K}, k.dt, tag::ab), dst({k.M, k.N}, mdt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wmd, dst), attr, engine());
    CachedMatmul m{dnnl::matmul(pd), pd.scratchpad_desc().get_size()};
    std::unique_lock lock(mu_);
    return map_.try_emplace(k, std::move(m)).first->second;
  }

 private:
  std::shared_mutex mu_;
  std::unordered_map<PrimKey, CachedMatmul, PrimKeyHash> map_;
};

PrimCache& prim_cache() {
  static PrimCache c;
  return c;
}

// Rounds rows of x [M, K] to BF16 (round to nearest even, NaN stays NaN).
void round_to_bf16(uint16_t* dst, const float* x, int64_t M, int64_t K) {
  parallel_for(
      M,
      [&](int64_t m0, int64_t m1) {
        const int64_t n = (m1 - m0) * K;
        const float* s = x + m0 * K;
        uint16_t* d = dst + m0 * K;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + i)));
        for (; i < n; ++i) d[i] = f32_to_bf16(s[i]);
      },
      std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)));
}

}  // namespace

struct LinearWeight::Impl {
  bool fp8_has_nan = false;
  bool has_packed = false;
  mdt packed_dt = mdt::f32;
  memory packed;  // Wᵀ [in, out] in oneDNN's layout (see the file comment)
  size_t packed_bytes = 0;
};

LinearWeight::LinearWeight(const WeightView& w, Compute c) : view_(w), compute_(c) {
  DSV3_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F8_E4M3,
             "linear weight: dtype {} unsupported (F32, BF16 or F8_E4M3)", dtype_name(w.dtype));
  DSV3_CHECK(w.rows >= 0 && w.cols >= 0, "linear weight: bad shape [{}, {}]", w.rows, w.cols);
  DSV3_CHECK(w.data || w.rows * w.cols == 0, "linear weight: null data");
  DSV3_CHECK(w.dtype != DType::F8_E4M3 || w.scale_inv || w.rows * w.cols == 0,
             "linear weight: FP8 weight [{}, {}] without scale_inv", w.rows, w.cols);
  impl_ = std::make_unique<Impl>();
  const int64_t N = w.rows, K = w.cols;
  if (w.dtype == DType::F8_E4M3)
    impl_->fp8_has_nan = fp8_has_nan_code(static_cast<const uint8_t*>(w.data), N * K);
  if (N == 0 || K == 0 || (c == Compute::F32 && w.dtype == DType::F32)) return;

  impl_->packed_dt = c == Compute::BF16 ? mdt::bf16 : mdt::f32;
  memory::desc ref_w({K, N}, impl_->packed_dt, tag::any);
  memory::desc ref_src({kPackRefM, K}, impl_->packed_dt, tag::ab);
  memory::desc ref_dst({kPackRefM, N}, mdt::f32, tag::ab);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ref_src, ref_w, ref_dst), engine());
  impl_->packed = memory(pd.weights_desc(), engine());
  impl_->packed_bytes = pd.weights_desc().get_size();

  // The stored [out, in] row-major weight is Wᵀ [in, out] in layout "ba".
  std::vector<float> deq;
  memory plain;
  if (w.dtype == DType::F8_E4M3) {
    deq = dequantize(w);
    plain = memory(memory::desc({K, N}, mdt::f32, tag::ba), engine(), deq.data());
  } else {
    plain = memory(memory::desc({K, N}, w.dtype == DType::BF16 ? mdt::bf16 : mdt::f32, tag::ba),
                   engine(), const_cast<void*>(w.data));
  }
  dnnl::reorder(plain, impl_->packed).execute(thread_stream(), plain, impl_->packed);
  thread_stream().wait();
  impl_->has_packed = true;
}
LinearWeight::LinearWeight() = default;
LinearWeight::~LinearWeight() = default;
LinearWeight::LinearWeight(LinearWeight&&) noexcept = default;
LinearWeight& LinearWeight::operator=(LinearWeight&&) noexcept = default;

size_t LinearWeight::stored_bytes() const {
  size_t n = size_t(view_.rows * view_.cols) * dtype_size(view_.dtype);
  if (view_.dtype == DType::F8_E4M3)
    n += size_t((view_.rows + 127) / 128 * ((view_.cols + 127) / 128)) * 4;
  return n;
}

size_t LinearWeight::extra_bytes() const {
  return impl_ ? impl_->packed_bytes : 0;
}

int64_t linear_gemv_max_m(Compute c) {
  return c == Compute::BF16 ? kGemvMaxM_BF16 : kGemvMaxM_F32;
}

std::vector<float> dequantize(const WeightView& w) {
  std::vector<float> out(size_t(w.rows * w.cols));
  to_f32(out.data(), w.data, w.dtype, out.size());
  if (w.dtype == DType::F8_E4M3) {
    DSV3_ASSERT(w.scale_inv, "fp8 weight without scale_inv");
    const int64_t sc = (w.cols + 127) / 128;
    for (int64_t r = 0; r < w.rows; ++r)
      for (int64_t c = 0; c < w.cols; ++c)
        out[r * w.cols + c] *= w.scale_inv[(r / 128) * sc + c / 128];
  }
  return out;
}

void linear_forward(float* y, const float* x, int64_t M, const LinearWeight& w, bool accumulate) {
  if (w.lowp()) {
    lowp_forward(y, x, M, *w.lowp(), accumulate);
    return;
  }
  const LinearWeight::Impl* im = w.impl();
  DSV3_CHECK(im, "linear_forward: empty LinearWeight");
  const WeightView& v = w.view();
  const int64_t N = v.rows, K = v.cols;
  if (M <= 0 || N == 0) return;
  if (M <= linear_gemv_max_m(w.compute()) || K == 0) {
    gemv_forward(y, x, M, v, im->fp8_has_nan, accumulate);
    return;
  }
  if (!im->has_packed) {  // F32 compute on an F32 weight: no copy, sgemm reads it in place
    gemm(false, true, M, N, K, 1.0f, x, K, static_cast<const float*>(v.data), K,
         accumulate ? 1.0f : 0.0f, y, N);
    return;
  }
  const CachedMatmul& mm = prim_cache().get(
      {M, N, K, im->packed_dt, accumulate, omp_get_max_threads()}, im->packed.get_desc());
  void* src = const_cast<float*>(x);
  thread_local std::vector<uint16_t> xb;  // [M, K] BF16 activations; grows, then reused
  if (im->packed_dt == mdt::bf16) {
    if (xb.size() < size_t(M * K)) xb.resize(size_t(M * K));
    round_to_bf16(xb.data(), x, M, K);
    src = xb.data();
  }
  memory src_m(memory::desc({M, K}, im->packed_dt, tag::ab), engine(), src);
  memory dst_m(memory::desc({M, N}, mdt::f32, tag::ab), engine(), y);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, im->packed}, {DNNL_ARG_DST, dst_m}};
  if (mm.scratch_bytes > 0) {
    thread_local std::vector<uint8_t> scratch;  // this thread's matmul scratchpad; grows
    if (scratch.size() < mm.scratch_bytes) scratch.resize(mm.scratch_bytes);
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(memory::desc({int64_t(mm.scratch_bytes)}, mdt::u8, tag::a), engine(),
                        scratch.data()));
  }
  dnnl::stream& s = thread_stream();
  mm.prim.execute(s, args);
  s.wait();
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) {
  if (M == 0 || N == 0) return;
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
  DSV3_ASSERT(st == dnnl_success, "dnnl_sgemm failed ({})", int(st));
}

// Training GEMMs are timed as `gemm_s` unless an enclosing phase (attention, experts) times its
// own, or they run inside a parallel region (per-expert products).
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const bool own = profiling() && !omp_in_parallel() && !gemm_grouped();
  ProfileScope ps(own ? &StepProfile::gemm_s : nullptr);
  if (own) ++step_profile().gemm_calls;
  gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
    }
}

void linear_forward(double* y, const double* x, int64_t M, const DenseWeight<double>& w,
                    bool accumulate) {
  gemm(false, true, M, w.rows, w.cols, 1.0, x, w.cols, w.data, w.cols, accumulate ? 1.0 : 0.0, y,
       w.rows);
}

void linear_backward_input(float* dx, const float* dy, int64_t M, const LinearWeight& w,
                           bool accumulate) {
  if (w.lowp()) {
    lowp_backward_input(dx, dy, M, *w.lowp(), accumulate);
    return;
  }
  const WeightView& v = w.view();
  DSV3_CHECK(v.dtype == DType::F32,
             "linear backward: weight [{}, {}] is stored as {}; training needs F32 weights", v.rows,
             v.cols, dtype_name(v.dtype));
  gemm(false, false, M, v.cols, v.rows, 1.0f, dy, v.rows, static_cast<const float*>(v.data), v.cols,
       accumulate ? 1.0f : 0.0f, dx, v.cols);
}

void linear_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                            int64_t out) {
  if (M == 0) return;
  const Precision p = wgrad_precision();
  if (p != Precision::F32) {
    lowp_backward_weight(dW, dy, x, M, in, out, p);
    return;
  }
  gemm(true, false, out, in, M, 1.0f, dy, out, x, in, 1.0f, dW, in);
}

void linear_backward_input(double* dx, const double* dy, int64_t M, const DenseWeight<double>& w,
                           bool accumulate) {
  gemm(false, false, M, w.cols, w.rows, 1.0, dy, w.rows, w.data, w.cols, accumulate ? 1.0 : 0.0, dx,
       w.cols);
}

}  // namespace dsv3::cpu
