// Plain reference implementation of linear.hpp; the optimized kernels replace the bodies while
// keeping these semantics (tests compare against naive loops).
#include "backend/cpu/linear.hpp"

#include <dnnl.h>

#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cpu {

struct LinearWeight::Impl {
  std::vector<float> f32;  // effective weight [out, in]
};

LinearWeight::LinearWeight(const WeightView& w, Compute c) : view_(w), compute_(c) {
  impl_ = std::make_unique<Impl>();
  impl_->f32 = dequantize(w);
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

std::vector<float> dequantize(const WeightView& w) {
  std::vector<float> out(size_t(w.rows * w.cols));
  to_f32(out.data(), w.data, w.dtype, out.size());
  if (w.dtype == DType::F8_E4M3) {
    DSV3_ASSERT(w.scale_inv, "fp8 weight without scale_inv");
    const int64_t sc = (w.cols + 127) / 128;
    for (int64_t r = 0; r < w.rows; ++r)
      for (int64_t c = 0; c < w.cols; ++c) out[r * w.cols + c] *= w.scale_inv[(r / 128) * sc + c / 128];
  }
  return out;
}

void linear_forward(float* y, const float* x, int64_t M, const LinearWeight& w, bool accumulate) {
  gemm_f32(false, true, M, w.out(), w.in(), 1.0f, x, w.in(), w.impl()->f32.data(), w.in(),
           accumulate ? 1.0f : 0.0f, y, w.out());
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) {
  if (M == 0 || N == 0) return;
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                                B, ldb, beta, C, ldc);
  DSV3_ASSERT(st == dnnl_success, "dnnl_sgemm failed ({})", int(st));
}

}  // namespace dsv3::cpu
