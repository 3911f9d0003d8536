// FP8 e4m3 weights with 128×128 block scales (the DeepSeek-V3 release layout: codes [rows, cols]
// and scale_inv [ceil(rows/128), ceil(cols/128)], effective weight code·scale_inv) consumed as
// stored: the decode GEMV widens the codes in registers, and the prefill GEMM converts a
// few rows at a time into a small buffer that stays in cache (no dequantized copy of the weight).
#pragma once
#include <cstdint>

#include "backend/cpu/linear.hpp"

namespace dsv3::cpu {

// y[m, n] (+)= Σ_k x[m, k] · W_eff[n, k] for m < M (x: [M, cols], y: [M, rows], both row-major),
// FP32 products of x·scale_inv and the exactly widened code. `has_nan` must be true when the
// weight holds NaN codes (0x7f, 0xff; fp8_has_nan_code): they are then decoded as NaN. Splits the
// output rows over the pool (inline inside a parallel region).
void gemv_fp8(float* y, const float* x, int64_t M, const WeightView& w, bool has_nan,
              bool accumulate);

// The same product on BF16 arithmetic (linear_forward's decode for Compute::BF16): x·scale_inv is
// rounded to BF16 once per call, the codes are widened to BF16 by integer shifts (every e4m3 value
// is a BF16 value) and vdpbf16ps sums the products in FP32. Differs from gemv_fp8 by the rounding
// of x (relative 2⁻⁹ per product) and by subnormal codes (|code| < 2⁻⁶, weights under
// 2⁻⁶·scale_inv), which vdpbf16ps reads as zero. NaN codes give NaN as in gemv_fp8.
void gemv_fp8_bf16(float* y, const float* x, int64_t M, const WeightView& w, bool has_nan,
                   bool accumulate);

// FP8 twins of gemv_rows / gemv_t_rows (gemv.hpp), which dispatch to them: one activation row
// against weight rows [n0, n1) (y[n - n0] = Σ_k x[k]·W_eff[n, k]), and the transposed product
// over n rows from r0 (y[c] = Σ_{r<n} x[r]·W_eff[r0 + r, c]). FP32 products of x·scale_inv and
// the exact code, NaN codes decoded as NaN. Calling thread only.
void gemv_fp8_rows(float* y, const float* x, const WeightView& w, int64_t n0, int64_t n1);
void gemv_fp8_t_rows(float* y, const float* x, const WeightView& w, int64_t r0, int64_t n);

// True when an FP8 e4m3 buffer of n bytes holds a NaN code.
bool fp8_has_nan_code(const uint8_t* p, int64_t n);

// Rows [n0, n1) of the effective weight, row-major [n1 - n0, cols]: as BF16 (code·scale_inv
// rounded to nearest even once, as a dequantize-then-round would) or as FP32 (exact product
// rounded once). Calling thread only.
void fp8_rows_to_bf16(uint16_t* dst, const WeightView& w, int64_t n0, int64_t n1);
void fp8_rows_to_f32(float* dst, const WeightView& w, int64_t n0, int64_t n1);

// BF16 rows [n0, n1) widened to FP32, row-major [n1 - n0, cols]. Calling thread only.
void bf16_rows_to_f32(float* dst, const WeightView& w, int64_t n0, int64_t n1);

}  // namespace dsv3::cpu
