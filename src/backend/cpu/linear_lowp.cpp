// Implementation of linear_lowp.hpp: the weight operands are packed at refresh; each product is
// one gemm_lowp_a32, which converts the activation operand per block of rows on the thread that
// uses it (the Wgrad activation x is converted while it is packed).
#include "backend/cpu/linear_lowp.hpp"

#include <algorithm>
#include <atomic>

#include <omp.h>

#include "backend/cpu/gemm_lowp.hpp"
#include "backend/cpu/quant_train.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {
namespace {

std::atomic<int> g_wgrad{int(Precision::F32)};

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
    lowp_pack_b(fprop, {q, ldw, false}, nullptr, rows, cols);
    lowp_pack_b(dgrad, {qp, cols, true}, nullptr, cols, rows);
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
  lowp_pack_b(fprop, {q, ldw, false}, s, rows, cols);
  lowp_pack_b(dgrad, {qp, cols, true}, st, cols, rows);
}

size_t LowpWeight::bytes() const {
  return w.size() * 2 + (wp.size() + sw.size() + swt.size() + sblock.size()) * 4 + fprop.bytes() +
         dgrad.bytes();
}

void lowp_forward(float* y, const float* x, int64_t M, const LowpWeight& w, bool accumulate) {
  if (M <= 0) return;
  GemmTimer timer;
  gemm_lowp_a32(y, w.rows(), M, x, w.cols(), false, w.precision() == Precision::FP8, w.fprop,
                accumulate);
}

void lowp_backward_input(float* dx, const float* dy, int64_t M, const LowpWeight& w,
                         bool accumulate) {
  if (M <= 0) return;
  GemmTimer timer;
  gemm_lowp_a32(dx, w.cols(), M, dy, w.rows(), false, w.precision() == Precision::FP8, w.dgrad,
                accumulate);
}

// dW[out, in] += Σ_t dy[t, out]·x[t, in]: K = tokens; x is packed from its natural [tokens, in]
// storage and dy read as its transpose, both converted on the way (no transpose pass). The
// tokens are split between the threads (at multiples of 128, so FP8's chunks stay whole): each
// converts only its own tokens of both operands, and the partial products are summed after.
void lowp_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                          int64_t out, Precision p) {
  check_lowp(p, "lowp_backward_weight");
  if (M <= 0) return;
  GemmTimer timer;
  const bool fp8 = p == Precision::FP8;
  const int64_t tiles = quant_tiles(M);
  const int parts = int(std::min<int64_t>(region_threads(), tiles / 2));  // ≥ 256 tokens each
  if (parts <= 1) {
    thread_local LowpPackedB xb;
    lowp_pack_b_f32(xb, x, in, in, M, fp8);
    gemm_lowp_a32(dW, in, out, dy, out, true, fp8, xb, true);
    return;
  }
  thread_local std::vector<float> partial;  // [parts - 1][out, in]
  float* part = grow(partial, size_t((parts - 1) * out * in));
#pragma omp parallel num_threads(parts)
  {
    const int t = omp_get_thread_num();
    const int64_t k0 = tiles * t / parts * kQuantTile;
    const int64_t k1 = std::min(M, tiles * (t + 1) / parts * kQuantTile);
    thread_local LowpPackedB xb;
    lowp_pack_b_f32(xb, x + k0 * in, in, in, k1 - k0, fp8);
    gemm_lowp_a32(t == 0 ? dW : part + (t - 1) * out * in, in, out, dy + k0 * out, out, true, fp8,
                  xb, t == 0);
  }
  parallel_for(out, [&](int64_t r0, int64_t r1) {
    for (int t = 1; t < parts; ++t)
      for (int64_t r = r0; r < r1; ++r) {
        const float* src = part + (t - 1) * out * in + r * in;
        float* dst = dW + r * in;
        for (int64_t i = 0; i < in; ++i) dst[i] += src[i];
      }
  });
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
