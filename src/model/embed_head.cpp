// Embedding and the fused head + cross-entropy; see embed_head.hpp.
#include "model/embed_head.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

#include "backend/cpu/linear_lowp.hpp"
#include "backend/cpu/vmath.hpp"
#include "backend/cpu/vreduce.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"

namespace dsv3::model {

template <typename S>
void embedding_forward(S* out, const typename W<S>::Table& table, const int32_t* tokens,
                       int64_t N) {
  const int64_t V = table.rows, D = table.cols;
  for (int64_t n = 0; n < N; ++n)
    DSV3_CHECK(tokens[n] >= 0 && tokens[n] < V,
               "token id {} at position {} is outside the vocabulary [0, {})", tokens[n], n, V);
  parallel_for_balanced(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      if constexpr (std::is_same_v<S, float>)
        to_f32(out + n * D,
               static_cast<const uint8_t*>(table.data) +
                   size_t(tokens[n]) * size_t(D) * dtype_size(table.dtype),
               table.dtype, size_t(D));
      else
        std::copy_n(table.data + int64_t(tokens[n]) * D, D, out + n * D);
    }
  });
}

template <typename S>
void embedding_backward(S* dtable, const S* dout, const int32_t* tokens, int64_t N, int64_t D) {
  // Column blocks in parallel, rows in order: deterministic, no two threads share a row slice.
  constexpr int64_t kCols = 64;
  parallel_for((D + kCols - 1) / kCols, [&](int64_t cb, int64_t ce) {
    const int64_t j0 = cb * kCols, j1 = std::min(D, ce * kCols);
    for (int64_t n = 0; n < N; ++n) {
      S* dst = dtable + int64_t(tokens[n]) * D;
      const S* src = dout + n * D;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  });
}

template <typename S>
double head_cross_entropy(S* dxn, S* dW, const S* xn, const typename W<S>::Lin& head,
                          const int32_t* targets, int64_t N, S scale, int64_t* count,
                          HeadScratch<S>& s) {
  const int64_t V = head.out(), D = head.in();
  constexpr int64_t kChunk = 1024;
  double total = 0;
  int64_t scored = 0;
  S* logits = grow(s.logits, size_t(std::min(N, kChunk) * V));
  for (int64_t r0 = 0; r0 < N; r0 += kChunk) {
    const int64_t rows = std::min(kChunk, N - r0);
    cpu::linear_forward(logits, xn + r0 * D, rows, head);
    double part = 0;
    int64_t cnt = 0;
    std::optional<ProfileScope> ps(std::in_place, &StepProfile::loss_s);
#pragma omp parallel for reduction(+ : part, cnt) if (rows > 16)
    for (int64_t r = 0; r < rows; ++r) {
      S* l = logits + r * V;
      const int32_t tgt = targets[r0 + r];
      if (tgt < 0) {
        if (dxn) std::fill_n(l, V, S(0));
        continue;
      }
      const S mx = cpu::max_ps(l, V);
      S sum = 0;
      const S target_logit = l[tgt];
      // With dxn, keep exp(l - mx) to turn it into the softmax gradient.
      sum = cpu::exp_shift_sum(dxn ? l : nullptr, l, V, mx);
      part += double(mx + std::log(sum) - target_logit);
      cnt += 1;
      if (dxn) {
        const S f = scale / sum;
        for (int64_t i = 0; i < V; ++i) l[i] *= f;
        l[tgt] -= scale;
      }
    }
    ps.reset();
    total += part;
    scored += cnt;
    if (dxn) {
      cpu::linear_backward_input(dxn + r0 * D, logits, rows, head);
      // Like Fprop and Dgrad (through the head's low-precision copy when one is attached): BF16
      // inputs in a low-precision step, the report's original precision of the output head.
      bool done = false;
      if constexpr (std::is_same_v<S, float>)
        if (cpu::wgrad_precision() != cpu::Precision::F32) {
          cpu::lowp_backward_weight(dW, logits, xn + r0 * D, rows, D, V, cpu::Precision::BF16);
          done = true;
        }
      if (!done) cpu::gemm(true, false, V, D, rows, S(1), logits, V, xn + r0 * D, D, S(1), dW, D);
    }
  }
  if (count) *count = scored;
  return total;
}

#define DSV3_EMBED_HEAD_INSTANTIATE(S)                                                      \
  template void embedding_forward<S>(S*, const W<S>::Table&, const int32_t*, int64_t);      \
  template void embedding_backward<S>(S*, const S*, const int32_t*, int64_t, int64_t);      \
  template double head_cross_entropy<S>(S*, S*, const S*, const W<S>::Lin&, const int32_t*, \
                                        int64_t, S, int64_t*, HeadScratch<S>&);
DSV3_EMBED_HEAD_INSTANTIATE(float)
DSV3_EMBED_HEAD_INSTANTIATE(double)

}  // namespace dsv3::model
