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
