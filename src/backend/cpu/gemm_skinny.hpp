// Skinny GEMM for batched decode: y[M, N] (+)= x[M, K] · Wᵀ with a few activation rows (M from 2
// to a few dozen) and W the stored BF16 weight [N, K] row-major, read in place once per call for
// all M rows. x is rounded to BF16 once; the products run on AVX-512 BF16 (vdpbf16ps: pairs of
// BF16 products summed into FP32) over 32-element chunks of K, with a register tile of up to 4
// activation rows × 6 (or 8) weight rows, and one horizontal reduction per output at the end.
// Threads split the output rows. This is the path linear_forward takes for batches of decode
// rows (linear.cpp): oneDNN's brgemm instead copies every block of the weight into its VNNI
// form per call, an extra pass over the weight for a product that is bound by reading it.
#pragma once
#include <cstdint>

#include "backend/cpu/linear.hpp"

namespace dsv3::cpu {

// The row stride (elements) of the BF16 activations skinny_rows reads: K rounded up to 32.
inline int64_t skinny_ldx(int64_t K) {
  return (K + 31) / 32 * 32;
}

// xb[m, k] = bf16(x[m, k]) (round to nearest even, NaN stays NaN) for k < K, and 0 for
// K ≤ k < skinny_ldx(K). Calling thread only.
void skinny_round_x(uint16_t* xb, const float* x, int64_t M, int64_t K);

// Weight rows [n0, n1) of a BF16 [·, K] row-major array w against M activation rows xb (from
// skinny_round_x, stride skinny_ldx(K)): y[m·ldy + n] (+)= Σ_k xb[m, k] · w[n, k] with FP32
// accumulation. Calling thread only.
void skinny_rows(float* y, int64_t ldy, const uint16_t* xb, int64_t M, const uint16_t* w, int64_t K,
                 int64_t n0, int64_t n1, bool accumulate);

// y[m, n] (+)= Σ_k bf16(x[m, k]) · W[n, k] for m < M (x: [M, K], y: [M, N] row-major), W a BF16
// weight [N, K]. Splits the output rows over the pool (inline inside a parallel region).
void gemm_skinny_bf16(float* y, const float* x, int64_t M, const WeightView& w, bool accumulate);

}  // namespace dsv3::cpu
