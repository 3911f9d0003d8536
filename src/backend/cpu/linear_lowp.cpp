// Implementation of linear_lowp.hpp: quantize the operands (quant_train.hpp) into per-thread
// scratch, then one gemm_lowp_nt per product.
#include "backend/cpu/linear_lowp.hpp"

#include <atomic>

#include <omp.h>

#include "backend/cpu/gemm_lowp.hpp"
#include "backend/cpu/quant_train.hpp"
#include "core/error.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {
namespace {

std::atomic<int> g_wgrad{int(Precision::F32)};

// Per-thread operand scratch; grows, then reused.
struct Scratch {
  std::vector<uint16_t> a;
  std::vector<uint32_t> pa, pb;
  std::vector<float> sa, sb;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

void check_lowp(Precision p, const char* what) {
  DSV3_CHECK(p == Precision::BF16 || p == Precision::FP8, "{}: precision {} is not low", what,
             precision_name(p));
}

// Times the product as `gemm_s` like cpu::gemm (outside parallel regions and grouped phases).
struct GemmTimer {
  bool own = profiling() && !omp_in_parallel() && !gemm_grouped();
  ProfileScope ps{own ? &StepProfile::gemm_s : nullptr};
  GemmTimer() {
    if (own) ++step_profile().gemm_calls;
  }
};

}  // namespace

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::F32:
      return "fp32";
    case Precision::BF16:
      return "bf16";
    case Precision::FP8:
      return "fp8";
  }
  return "?";
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32" || s == "f32") return Precision::F32;
  if (s == "bf16") return Precision::BF16;
  if (s == "fp8") return Precision::FP8;
  DSV3_FAIL("precision '{}' is not one of fp32, bf16, fp8", s);
}

void LowpWeight::refresh(const float* w_f32, int64_t rows, int64_t cols, Precision p) {
  check_lowp(p, "LowpWeight");
  DSV3_CHECK(rows > 0 && cols > 0 && w_f32, "LowpWeight: empty weight [{}, {}]", rows, cols);
  p_ = p;
  rows_ = rows;
  cols_ = cols;
  const int64_t ldw = lowp_pad_k(cols), kp = (rows + 1) / 2;
  uint16_t* q = grow(w, size_t(rows * ldw));
  uint32_t* qp = grow(wp, size_t(kp * cols));
  if (p == Precision::BF16) {
    bf16_rows(q, ldw, w_f32, cols, rows, cols);
    bf16_pairs(qp, cols, w_f32, cols, rows, cols);
    return;
  }
  const int64_t br = quant_tiles(rows), bc = quant_tiles(cols);
  float* sb = grow(sblock, size_t(br * bc));
  fp8_blocks(q, ldw, qp, cols, sb, w_f32, rows, cols);
  // Fprop: row n of W, chunk c of its input axis → block (n/128, c); Dgrad: column i of W, chunk
  // c of the output axis → block (c, i/128).
  float* s = grow(sw, size_t(rows * bc));
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t c = 0; c < bc; ++c) s[n * bc + c] = sb[(n / kQuantTile) * bc + c];
  float* st = grow(swt, size_t(cols * br));
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t c = 0; c < br; ++c) st[i * br + c] = sb[c * bc + i / kQuantTile];
}

size_t LowpWeight::bytes() const {
  return w.size() * 2 + (wp.size() + sw.size() + swt.size() + sblock.size()) * 4;
}

void lowp_forward(float* y, const float* x, int64_t M, const LowpWeight& w, bool accumulate) {
  if (M <= 0) return;
  GemmTimer timer;
  const int64_t N = w.rows(), K = w.cols(), lda = lowp_pad_k(K);
  Scratch& s = scratch();
  uint16_t* a = grow(s.a, size_t(M * lda));
  if (w.precision() == Precision::BF16) {
    bf16_rows(a, lda, x, K, M, K);
    gemm_lowp_nt(y, N, M, N, K, a, lda, w.w.data(), lda, nullptr, nullptr, accumulate);
    return;
  }
  float* sa = grow(s.sa, size_t(M * quant_tiles(K)));
  fp8_rows(a, lda, sa, x, K, M, K);
  gemm_lowp_nt(y, N, M, N, K, a, lda, w.w.data(), lda, sa, w.sw.data(), accumulate);
}

void lowp_backward_input(float* dx, const float* dy, int64_t M, const LowpWeight& w,
                         bool accumulate) {
  if (M <= 0) return;
  GemmTimer timer;
  const int64_t N = w.cols(), K = w.rows(), lda = lowp_pad_k(K);
  Scratch& s = scratch();
  uint16_t* a = grow(s.a, size_t(M * lda));
  const LowpOperand B{w.wp.data(), N, true};
  if (w.precision() == Precision::BF16) {
    bf16_rows(a, lda, dy, K, M, K);
    gemm_lowp(dx, N, M, N, K, {a, lda, false}, B, nullptr, nullptr, accumulate);
    return;
  }
  float* sa = grow(s.sa, size_t(M * quant_tiles(K)));
  fp8_rows(a, lda, sa, dy, K, M, K);
  gemm_lowp(dx, N, M, N, K, {a, lda, false}, B, sa, w.swt.data(), accumulate);
}

// dW[out, in] += Σ_t dy[t, out]·x[t, in]: K = tokens, both operands in the pairs layout of their
// natural [tokens, channels] storage (no transpose).
void lowp_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                          int64_t out, Precision p) {
  check_lowp(p, "lowp_backward_weight");
  if (M <= 0) return;
  GemmTimer timer;
  const int64_t kp = (M + 1) / 2;
  Scratch& s = scratch();
  uint32_t* a = grow(s.pa, size_t(kp * out));
  uint32_t* b = grow(s.pb, size_t(kp * in));
  if (p == Precision::BF16) {
    bf16_pairs(a, out, dy, out, M, out);
    bf16_pairs(b, in, x, in, M, in);
    gemm_lowp(dW, in, out, in, M, {a, out, true}, {b, in, true}, nullptr, nullptr, true);
    return;
  }
  const int64_t tiles = quant_tiles(M);
  float* sa = grow(s.sa, size_t(out * tiles));
  float* sb = grow(s.sb, size_t(in * tiles));
  fp8_pairs(a, out, sa, dy, out, M, out);
  fp8_pairs(b, in, sb, x, in, M, in);
  gemm_lowp(dW, in, out, in, M, {a, out, true}, {b, in, true}, sa, sb, true);
}

Precision wgrad_precision() {
  return Precision(g_wgrad.load(std::memory_order_relaxed));
}

WgradPrecision::WgradPrecision(Precision p) : prev_(wgrad_precision()) {
  g_wgrad.store(int(p), std::memory_order_relaxed);
}
WgradPrecision::~WgradPrecision() {
  g_wgrad.store(int(prev_), std::memory_order_relaxed);
}

}  // namespace dsv3::cpu
