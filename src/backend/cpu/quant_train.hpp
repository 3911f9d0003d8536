// Online quantization of training operands (DeepSeek-V3 report §3.3, "FP8 Training") into the
// operand layout of the low-precision GEMM (gemm_lowp.hpp): BF16 rows, K contiguous, K padded
// with zeros to an even length (vdpbf16ps consumes K in pairs).
//
// FP8 operands are E4M3 values times a scale. The GEMM needs the E4M3 value itself, which BF16
// holds exactly (3 mantissa bits, exponents 2^-9..2^8 inside BF16's range), so the quantizers
// below write the decoded E4M3 value as BF16 (`q`) and the scale beside it; the uint8 code of the
// same value is f32_to_fp8_e4m3(bf16_to_f32(q)) (core/quant.hpp stores codes).
//   rows     per 1×128 tile along a row (an activation: per token, per 128 channels)
//   pairs    per 128×1 tile along a column, in gemm_lowp's pairs layout (the Wgrad operands: per
//            channel, per 128 tokens; the report's 128×1 tiling of the transposed activation)
//   block    per 128×128 block, written as rows (Fprop) and as pairs (Dgrad)
// Scales follow core/quant.hpp: scale = amax / 448 over the tile's finite elements (1 when that
// is 0), code = e4m3 round-to-nearest-even of x / scale with saturation at ±448; NaN and ±Inf
// elements become NaN (they take no part in amax).
//
// E5M6 (the report's format for the input of the linear after attention, with power-of-two
// scales): 1 sign, 5 exponent bits (bias 15), 6 mantissa bits, subnormals, no infinities used
// (saturation at the largest finite value, 65024). Its values are exactly the IEEE half values
// whose 4 low mantissa bits are zero, so it is emulated in a 16-bit container: an IEEE half
// (uint16) rounded to 6 mantissa bits, decoded with F16C. Scale = the power of two 2^ceil(log2(
// amax / 65024)) per 1×128 tile (exact to apply and to remove).
#pragma once
#include <cstdint>

namespace dsv3::cpu {

constexpr int64_t kQuantTile = 128;

// Even K of the padded operand rows.
inline int64_t lowp_pad_k(int64_t k) {
  return (k + 1) & ~int64_t(1);
}
inline int64_t quant_tiles(int64_t k) {
  return (k + kQuantTile - 1) / kQuantTile;
}

// E4M3 rounding of one float (the value the code decodes to): round to nearest even, saturating
// at ±448, NaN and ±Inf to NaN. The scalar reference of the vector kernels.
float e4m3_round(float v);
// The vector kernel's rounding of n values (what the quantizers below apply to x / scale).
void e4m3_round_n(float* dst, const float* src, int64_t n);
// E5M6 rounding of one float into its 16-bit container (an IEEE half with 6 mantissa bits), and
// back.
uint16_t e5m6_encode(float v);
float e5m6_decode(uint16_t h);

// The "pairs" layout of gemm_lowp.hpp for a [rows = K, cols] matrix: p [ceil(rows/2), ldp]
// (ldp ≥ cols) of uint32, element (kp, c) = the BF16 values of rows 2kp (low half) and 2kp + 1
// (high half, zero past rows) in column c.

// q [rows, ldq] = bf16(x) with zero padding to ldq (ldq ≥ cols, even); x [rows, ldx].
void bf16_rows(uint16_t* q, int64_t ldq, const float* x, int64_t ldx, int64_t rows, int64_t cols);
// p = bf16(x) in the pairs layout.
void bf16_pairs(uint32_t* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows, int64_t cols);

// 1×128 tiles: q [rows, ldq] E4M3 values as BF16, scale [rows, quant_tiles(cols)].
void fp8_rows(uint16_t* q, int64_t ldq, float* scale, const float* x, int64_t ldx, int64_t rows,
              int64_t cols);
// 128×1 tiles (along the rows): p in the pairs layout, scale [cols, quant_tiles(rows)] (per
// column and 128 rows: the report's tiling of a Wgrad operand along the tokens).
void fp8_pairs(uint32_t* p, int64_t ldp, float* scale, const float* x, int64_t ldx, int64_t rows,
               int64_t cols);
// The same tiles as fp8_pairs, stored as E4M3 codes (core/dtype's f32_to_fp8_e4m3 of the values
// fp8_pairs writes, NaN as 0x7f): codes [ceil(rows/2), ldc] (ldc ≥ cols) of uint16, element
// (kp, c) = the code of row 2kp (low byte) and of row 2kp + 1 (high byte, 0 past rows) in column
// c; scale as fp8_pairs. One byte per element: the FP8 storage of a Wgrad activation.
void fp8_pairs_codes(uint16_t* codes, int64_t ldc, float* scale, const float* x, int64_t ldx,
                     int64_t rows, int64_t cols);
// 128×128 blocks of w [rows, cols]: q [rows, ldq] and p (pairs layout, ldp ≥ cols) (either may
// be null) and the block scales sblock [quant_tiles(rows), quant_tiles(cols)].
void fp8_blocks(uint16_t* q, int64_t ldq, uint32_t* p, int64_t ldp, float* sblock, const float* w,
                int64_t rows, int64_t cols);

// E5M6 per 1×128 tile with power-of-two scales: h [rows, cols] containers, scale [rows,
// quant_tiles(cols)]; x ≈ e5m6_decode(h) · scale.
void e5m6_rows(uint16_t* h, float* scale, const float* x, int64_t rows, int64_t cols);
void e5m6_rows_decode(float* x, const uint16_t* h, const float* scale, int64_t rows, int64_t cols);

}  // namespace dsv3::cpu
