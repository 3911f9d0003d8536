// Element-wise and row-wise CPU ops used by the model: RMSNorm, SwiGLU, softmax, RoPE.
// FP32 in and out; every reduction is FP32 (row sums in double where it is free).
#pragma once
#include <cstdint>

namespace dsv3::cpu {

// out[n, d] = in[n, d] * rsqrt(mean(in²) + eps) * weight[d]; rstd[n] saved when non-null.
// in / out rows are `ld_in` / `ld_out` apart (RMSNorm of a column slice).
void rmsnorm_forward(float* out, float* rstd, const float* in, const float* weight, int64_t n,
                     int64_t d, float eps, int64_t ld_in = -1, int64_t ld_out = -1);

// out[n, f] = silu(gate[n, f]) * up[n, f] where gate and up are the two halves of gu[n, 2f]
// (gate first) when `up` is null, else separate buffers.
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, int64_t f);

// In-place softmax of each row over its first `valid[r]` entries (or all `cols` when valid is
// null); entries past valid[r] become 0.
void softmax_rows(float* x, int64_t rows, int64_t cols, const int64_t* valid = nullptr);

// Rotates adjacent pairs (x[2i], x[2i+1]) of each row by the angle whose cos/sin are
// cs[pos][i] = {cos, sin}; x is [n, heads, ld] with the rope part at column offset `off`.
void rope_forward(float* x, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                  const float* cos_sin, const int64_t* positions);

}  // namespace dsv3::cpu
