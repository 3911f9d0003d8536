// FP8 (e4m3fn) block quantization as in the DeepSeek-V3 release and its FP8 GEMM recipe
// (paper section 3.3, "FP8 Training"; inference/convert.py and kernel.py of the official code).
//
// Weights: per 128x128 tile (edge tiles partial), scale_inv = amax(|tile|) / 448 in float32,
// code = e4m3fn round-to-nearest-even of the float32 quotient w / scale_inv, and the real weight is
// float32(e4m3 value) * scale_inv (one float32 multiply). scale_inv is row-major
// [ceil(rows/block), ceil(cols/block)], the `<name>_scale_inv` tensor of a checkpoint.
// Activations: per 1x128 group (per token, per 128 channels), scale = amax / 448, same rounding.
//
// Conventions where the formula alone is undefined:
// - A tile whose amax is 0 (all zeros), or so small that amax / 448 underflows to 0, gets
//   scale_inv = 1; every code is then +-0 (the values are below the smallest e4m3 subnormal), so
//   dequantization gives zeros and nothing divides by zero.
// - NaN and +-Inf elements do not take part in amax (e4m3fn has no infinity and one NaN would
//   otherwise poison the whole tile); they are stored as the e4m3fn NaN code (0x7f, sign kept), so
//   dequantization yields NaN exactly there and the finite elements quantize as if they were
//   alone.
#pragma once
#include <cstdint>

namespace dsv3 {

constexpr float kFp8E4M3Max = 448.0f;

// codes [rows, cols], scale_inv [ceil(rows/block), ceil(cols/block)], w [rows, cols].
void fp8_block_quantize(uint8_t* codes, float* scale_inv, const float* w, int64_t rows,
                        int64_t cols, int64_t block = 128);
// w [rows, cols] = float32(e4m3 code) * scale_inv of the code's block.
void fp8_block_dequantize(float* w, const uint8_t* codes, const float* scale_inv, int64_t rows,
                          int64_t cols, int64_t block = 128);

// codes [rows, cols], scale [rows, ceil(cols/group)], x [rows, cols]; x ~= e4m3(code) * scale.
void fp8_act_quantize(uint8_t* codes, float* scale, const float* x, int64_t rows, int64_t cols,
                      int64_t group = 128);

}  // namespace dsv3
