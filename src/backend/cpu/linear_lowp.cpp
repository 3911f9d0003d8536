// Implementation of linear_lowp.hpp: the weight operands are packed at refresh; each product is
// one gemm_lowp_a32, which converts the activation operand per block of rows on the thread that
// uses it (the Wgrad activation x is converted while it is packed).
#include "backend/cpu/linear_lowp.hpp"

#include <algorithm>
#include <atomic>

#include <omp.h>

#include "backend/cpu/gemm_lowp.hpp"
#include "backend/cpu/quant_train.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {
namespace {

std::atomic<int> g_wgrad{int(Precision::F32)};
std::atomic<bool> g_store{true};

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

namespace {

// dW[out, in] += Σ_t dy[t, out]·x[t, in]: K = tokens; pack_x(xb, k0, k1) packs tokens [k0, k1)
// of x (as lowp_pack_b_f32 does from its natural [tokens, in] storage, converted on the way, or
// from a saved form) and dy is read as its transpose, converted on the way (no transpose pass).
// The tokens are split between the threads (at multiples of 128, so FP8's chunks stay whole):
// each converts only its own tokens of both operands, and the partial products are summed after.
template <typename PackX>
void wgrad(float* dW, const float* dy, int64_t M, int64_t in, int64_t out, bool fp8,
           PackX&& pack_x) {
  GemmTimer timer;
  const int64_t tiles = quant_tiles(M);
  const int parts = int(std::min<int64_t>(region_threads(), tiles / 2));  // ≥ 256 tokens each
  if (parts <= 1) {
    thread_local LowpPackedB xb;
    pack_x(xb, 0, M);
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
    pack_x(xb, k0, k1);
    gemm_lowp_a32(t == 0 ? dW : part + (t - 1) * out * in, in, out, dy + k0 * out, out, true, fp8,
                  xb, t == 0);
  }
  parallel_for_balanced(out, [&](int64_t r0, int64_t r1) {
    for (int t = 1; t < parts; ++t)
      for (int64_t r = r0; r < r1; ++r) {
        const float* src = part + (t - 1) * out * in + r * in;
        float* dst = dW + r * in;
        for (int64_t i = 0; i < in; ++i) dst[i] += src[i];
      }
  });
}

}  // namespace

void lowp_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                          int64_t out, Precision p) {
  check_lowp(p, "lowp_backward_weight");
  if (M <= 0) return;
  const bool fp8 = p == Precision::FP8;
  wgrad(dW, dy, M, in, out, fp8, [&](LowpPackedB& xb, int64_t k0, int64_t k1) {
    lowp_pack_b_f32(xb, x + k0 * in, in, in, k1 - k0, fp8);
  });
}

void SavedAct::save(const float* x, int64_t rows, int64_t cols, ActForm f) {
  DSV3_CHECK(f != ActForm::F32, "SavedAct::save: form F32 is kept by the caller");
  DSV3_CHECK(rows >= 0 && cols > 0, "SavedAct::save: bad shape [{}, {}]", rows, cols);
  form_ = f;
  rows_ = rows;
  cols_ = cols;
  const int64_t kp = (rows + 1) / 2;
  switch (f) {
    case ActForm::BF16:
      bf16_pairs(grow(bf16_, size_t(kp * cols)), cols, x, cols, rows, cols);
      break;
    case ActForm::FP8:
      fp8_pairs_codes(grow(h_, size_t(kp * cols)), cols,
                      grow(scale_, size_t(cols * quant_tiles(rows))), x, cols, rows, cols);
      break;
    case ActForm::E5M6:
      e5m6_rows(grow(h_, size_t(rows * cols)), grow(scale_, size_t(rows * quant_tiles(cols))), x,
                rows, cols);
      break;
    case ActForm::F32:
      break;
  }
}

void SavedAct::release() {
  form_ = ActForm::F32;
  rows_ = cols_ = 0;
  std::vector<uint32_t>().swap(bf16_);
  std::vector<uint16_t>().swap(h_);
  std::vector<float>().swap(scale_);
}

void SavedAct::decode(float* x) const {
  const int64_t R = rows_, C = cols_, tiles = quant_tiles(R);
  switch (form_) {
    case ActForm::E5M6:
      e5m6_rows_decode(x, h_.data(), scale_.data(), R, C);
      return;
    case ActForm::BF16:
    case ActForm::FP8:
      parallel_for(R, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < C; ++c) {
            const size_t i = size_t((r / 2) * C + c);
            float v;
            if (form_ == ActForm::BF16) {
              v = bf16_to_f32(uint16_t(bf16_[i] >> (16 * (r % 2))));
            } else {
              v = fp8_e4m3_to_f32(uint8_t(h_[i] >> (8 * (r % 2)))) *
                  scale_[size_t(c * tiles + r / kQuantTile)];
            }
            x[r * C + c] = v;
          }
      });
      return;
    case ActForm::F32:
      DSV3_FAIL("SavedAct::decode: nothing saved");
  }
}

void lowp_backward_weight(float* dW, const float* dy, const SavedAct& x, int64_t out, Precision p) {
  check_lowp(p, "lowp_backward_weight");
  const int64_t M = x.rows_, in = x.cols_;
  if (M <= 0) return;
  const bool fp8 = p == Precision::FP8;
  switch (x.form_) {
    case ActForm::BF16:
      DSV3_CHECK(!fp8, "lowp_backward_weight: a BF16-saved activation in an FP8 Wgrad");
      wgrad(dW, dy, M, in, out, false, [&](LowpPackedB& xb, int64_t k0, int64_t k1) {
        lowp_pack_b(xb, {x.bf16_.data() + (k0 / 2) * in, in, true}, nullptr, in, k1 - k0);
      });
      return;
    case ActForm::FP8: {
      DSV3_CHECK(fp8, "lowp_backward_weight: an FP8-saved activation in a BF16 Wgrad");
      const int64_t tiles = quant_tiles(M);
      wgrad(dW, dy, M, in, out, true, [&](LowpPackedB& xb, int64_t k0, int64_t k1) {
        lowp_pack_b_e4m3(xb, x.h_.data() + (k0 / 2) * in, in, x.scale_.data() + k0 / kQuantTile,
                         tiles, in, k1 - k0);
      });
      return;
    }
    case ActForm::E5M6: {
      thread_local std::vector<float> xd;
      float* d = grow(xd, size_t(M * in));
      x.decode(d);
      lowp_backward_weight(dW, dy, d, M, in, out, p);
      return;
    }
    case ActForm::F32:
      DSV3_FAIL("lowp_backward_weight: no saved activation");
  }
}

Precision wgrad_precision() {
  return Precision(g_wgrad.load(std::memory_order_relaxed));
}

ActForm saved_act_form(bool after_attention) {
  if (!g_store.load(std::memory_order_relaxed)) return ActForm::F32;
  switch (wgrad_precision()) {
    case Precision::BF16:
      return ActForm::BF16;
    case Precision::FP8:
      return after_attention ? ActForm::E5M6 : ActForm::FP8;
    case Precision::F32:
      break;
  }
  return ActForm::F32;
}

WgradPrecision::WgradPrecision(Precision p, bool lowp_storage)
    : prev_(wgrad_precision()), prev_store_(g_store.load(std::memory_order_relaxed)) {
  g_wgrad.store(int(p), std::memory_order_relaxed);
  g_store.store(lowp_storage, std::memory_order_relaxed);
}
WgradPrecision::~WgradPrecision() {
  g_wgrad.store(int(prev_), std::memory_order_relaxed);
  g_store.store(prev_store_, std::memory_order_relaxed);
}

}  // namespace dsv3::cpu
