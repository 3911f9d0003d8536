// Small-M products y = x·Wᵀ that read the stored weight directly (F32, BF16; FP8 e4m3 is
// gemv_fp8.hpp's): the decode path of linear_forward, and the per-head products of MLA's
// absorbed decode (slices of kv_b_proj, read in place).
#pragma once
#include <cstdint>

#include "backend/cpu/linear.hpp"

namespace dsv3::cpu {

// y[m, n] (+)= Σ_k x[m, k] · W[n, k] for m < M, all n, FP32 arithmetic; F32 or BF16 weights.
// Splits the output rows over the OpenMP pool (inline when called inside a parallel region).
void gemv_forward(float* y, const float* x, int64_t M, const WeightView& w, bool accumulate);

// One activation row against weight rows [n0, n1) on the calling thread:
// y[n - n0] = Σ_k x[k] · W[n, k]. F32, BF16 or FP8 e4m3 weights.
void gemv_rows(float* y, const float* x, const WeightView& w, int64_t n0, int64_t n1);

// Weight rows [n0, n1) against M activation rows on the calling thread, as gemv_forward computes
// them (the same arithmetic per output, whatever the split): y[m·ldy + n] (+)= Σ_k x[m·ldx + k] ·
// W[n, k] for m < M, n0 ≤ n < n1. F32 or BF16 weights.
void gemv_rows_m(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const WeightView& w,
                 int64_t n0, int64_t n1, bool accumulate);

// The transposed product over n consecutive rows from r0, on the calling thread:
// y[c] = Σ_{r<n} x[r] · W[r0 + r, c] for every column c < cols. F32, BF16 or FP8 e4m3 weights.
void gemv_t_rows(float* y, const float* x, const WeightView& w, int64_t r0, int64_t n);

// gemv_t_rows for M activation rows (x [M, n] with stride ldx, y [M, cols] with stride ldy), each
// weight vector loaded once for all rows; every output equals gemv_t_rows's. FP8 weights run
// gemv_t_rows row by row.
void gemv_t_rows_m(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M,
                   const WeightView& w, int64_t r0, int64_t n);

}  // namespace dsv3::cpu
