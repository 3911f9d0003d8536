// The prefill GEMM on FP8 e4m3 weights with 128×128 block scales (DeepSeek-V3 release layout),
// read as stored: each thread converts one 128-row × 512-column block of the weight at a time
// (the codes' exact BF16 values, laid out in vdpbf16ps pairs) into a 128 KiB buffer that stays
// in its L2, and a register-tiled vdpbf16ps kernel runs every activation row over it; the block
// scales multiply the FP32 sums of each 128 columns (carried from block to block by the ratio
// of their scales). No BF16 copy of the weight exists beyond that buffer.
#pragma once
#include <cstdint>

#include "backend/cpu/linear.hpp"

namespace dsv3::cpu {

// y[m·ldy + n] (+)= Σ_kb scale_inv(n, kb) · Σ_{k in kb} bf16(x[m, k]) · code(w[n, k]) for m < M,
// n < w.rows (x: [M, w.cols] row-major FP32, rounded to BF16 here; kb the 128-column blocks),
// products exact and sums in FP32 (one more rounding per 128 columns where a sum is carried into
// the next block's scale; see gemm_fp8.cpp). Subnormal codes (|code| < 2⁻⁶, weights under
// 2⁻⁶·scale_inv) count as zero (vdpbf16ps reads BF16 denormals as zero; see gemm_fp8.cpp).
// `has_nan` must be true when the weight holds NaN codes (fp8_has_nan_code); they then give NaN.
// Splits 128-row blocks of the weight (and the rows of x when there are fewer blocks than threads)
// over the pool; inline inside a parallel region.
void gemm_fp8_bf16(float* y, int64_t ldy, const float* x, int64_t M, const WeightView& w,
                   bool has_nan, bool accumulate);

// The columns of a packed weight (gemm_fp8_pack_bf16): K rounded up to 32, as oneDNN pads it.
inline int64_t fp8_pack_cols(int64_t K) {
  return (K + 31) / 32 * 32;
}

// Writes code·scale_inv of an FP8 weight [N, K], each rounded to BF16 (NaN codes to NaN when
// has_nan), as Wᵀ [K, N] in oneDNN's blocked layout BA16a64b2a (what its brgemm matmul picks for
// BF16 weights): 64-column panels of Wᵀ (64 rows of W) of fp8_pack_cols(K) rows, each 16 of
// its rows as 8 pairs × 64 columns × 2; rows past K and columns past N zero. dst holds
// fp8_pack_cols(K) × (N rounded up to 64) values. Splits 128-row blocks over the pool.
void gemm_fp8_pack_bf16(uint16_t* dst, const WeightView& w, bool has_nan);

}  // namespace dsv3::cpu
