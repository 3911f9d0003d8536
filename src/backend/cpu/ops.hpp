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

// ---- Training: backward passes, and scalar-generic twins of the forwards above ----
// The templates are instantiated for float and double (double drives the finite-difference
// gradient checks). A float call of a forward with a float eps picks the non-template overload
// above, so inference and training share the same float forward.
namespace dsv3::cpu {

template <typename S>
void rmsnorm_forward(S* out, S* rstd, const S* in, const S* weight, int64_t n, int64_t d, S eps,
                     int64_t ld_in = -1, int64_t ld_out = -1);
// din[n, d] (+)= ∂/∂in, dweight[d] += ∂/∂weight of out = rmsnorm(in)·weight, given dout.
// Saved: in, rstd (from the forward); weight. Row strides as in the forward (ld_dout for dout,
// ld_in for both in and din).
template <typename S>
void rmsnorm_backward(S* din, S* dweight, const S* dout, const S* in, const S* weight,
                      const S* rstd, int64_t n, int64_t d, int64_t ld_in = -1, int64_t ld_dout = -1,
                      bool accumulate = false);

template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n, int64_t f);
// dgate, dup [n, f] of out = silu(gate)·up. Saved: gate, up (pre-activation). dgate may alias
// gate and dup may alias up (read before written per element).
template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n,
                     int64_t f);

template <typename S>
void rope_forward(S* x, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                  const float* cos_sin, const int64_t* positions);
// In-place: the gradient of a rotation is the inverse rotation of the gradient.
template <typename S>
void rope_backward(S* dx, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                   const float* cos_sin, const int64_t* positions);

}  // namespace dsv3::cpu
