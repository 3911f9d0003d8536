// Element-wise and row-wise CPU ops of the model: RMSNorm, SwiGLU, softmax, RoPE, with the
// backward passes training needs. Each op is one template instantiated for float (inference and
// training) and double (the finite-difference gradient checks); every reduction that decides a
// result is in the op's precision or wider.
#pragma once
#include <cstdint>

namespace dsv3::cpu {

// out[n, d] = in[n, d] * rsqrt(mean(in²) + eps) * weight[d]; rstd[n] saved when non-null.
// in / out rows are `ld_in` / `ld_out` apart (RMSNorm of a column slice).
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

// out[n, f] = silu(gate[n, f]) * up[n, f]. out may alias gate or up.
template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n, int64_t f);
// dgate, dup [n, f] of out = silu(gate)·up. Saved: gate, up (pre-activation). dgate may alias
// gate and dup may alias up (read before written per element).
template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n,
                     int64_t f);

// In-place softmax of each row over its first `valid[r]` entries (or all `cols` when valid is
// null); entries past valid[r] become 0.
void softmax_rows(float* x, int64_t rows, int64_t cols, const int64_t* valid = nullptr);

// Rotates adjacent pairs (x[2i], x[2i+1]) of each row by the angle whose cos/sin are
// cs[pos][i] = {cos, sin}; x is [n, heads, ld] with the rope part at column offset `off`.
template <typename S>
void rope_forward(S* x, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                  const float* cos_sin, const int64_t* positions);
// In-place: the gradient of a rotation is the inverse rotation of the gradient.
template <typename S>
void rope_backward(S* dx, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                   const float* cos_sin, const int64_t* positions);

}  // namespace dsv3::cpu
