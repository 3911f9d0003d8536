// The low-precision GEMM of training: C[M, N] (+)= Σ_k A[m, k]·B[n, k] with BF16 operands (both
// K-contiguous, "NT"), FP32 accumulation, on AVX512-BF16 (vdpbf16ps: two BF16 products per FP32
// lane and instruction, twice the FP32 FMA rate).
//
// Without scales (BF16 training) the whole K accumulates in FP32 registers.
// With scales (the FP8 recipe, DeepSeek-V3 report §3.3): the operands hold E4M3 values (exact in
// BF16, and so is the product of two of them in FP32), sa [M, Kc] and sb [N, Kc] are the scales of
// each 128-long K chunk of a row of A and of B (Kc = ceil(K / 128)). Each chunk's partial sums
// are accumulated in FP32 registers of their own, then multiplied by sa·sb and added to the FP32
// accumulators: the report's promotion of partial results at an interval of 128 along K, here
// with full FP32 accumulation inside a chunk too.
//
// gemm_fp8_emulated is the plain reference of the same product with the H800 tensor core's
// limited accumulation emulated: products of a chunk are added into an accumulator that keeps
// only `acc_bits` significant bits (truncated after every addition), promoted into FP32 every
// `interval` K (0: never, the whole K in the limited accumulator).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv3::cpu {

// An operand of M (or N) rows over K, in one of two layouts:
//   rows   uint16 [rows, ld]: BF16, K contiguous, padded by zeros to an even count ≤ ld (even);
//   pairs  uint32 [ceil(K/2), ld] with ld ≥ rows: element (r, kp) holds the BF16 pair of
//          K = 2kp and 2kp + 1 (zero past K) — what interleaving consecutive rows of a [K, rows]
//          matrix gives, so a Wgrad operand (tokens × channels) needs no transpose.
struct LowpOperand {
  const void* data = nullptr;
  int64_t ld = 0;
  bool pairs = false;
};

// C[M, N] (+)= Σ_k A(m, k)·B(n, k); scales as gemm_lowp_nt.
void gemm_lowp(float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, const LowpOperand& A,
               const LowpOperand& B, const float* sa, const float* sb, bool accumulate);

// A [M, lda], B [N, ldb]: BF16 with K padded by zeros to an even count ≤ lda, ldb (lda, ldb even);
// sa, sb: both null, or both set (scaled). C [M, ldc] FP32. Thread-safe; runs on the calling
// thread alone inside a parallel region.
void gemm_lowp_nt(float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, const uint16_t* A,
                  int64_t lda, const uint16_t* B, int64_t ldb, const float* sa, const float* sb,
                  bool accumulate);

// B packed for the kernel once (a weight, per optimizer step) or per call: panels of 32 columns,
// K in pairs, [panels][ceil(K/2)][32] from a 64-byte aligned start, and with scales (FP8) the
// panels' column scales [panels][ceil(K/128)][32]; zeros past N and K.
struct LowpPackedB {
  int64_t n = 0, k = 0;
  bool scaled = false;
  std::vector<uint32_t> raw;
  std::vector<float> scales;
  const uint32_t* panels() const;
  size_t bytes() const { return raw.size() * 4 + scales.size() * 4; }
};

// Packs B(n, k) from a BF16 operand with its scales sb [N, ceil(K/128)] (or null).
void lowp_pack_b(LowpPackedB& out, const LowpOperand& B, const float* sb, int64_t N, int64_t K);
// Packs B(n, k) = b[k·ldb + n] (an FP32 [K, N] matrix: a Wgrad activation) converted on the fly:
// rounded to BF16, or (fp8) quantized to E4M3 per 128×1 tile along K as fp8_pairs does.
void lowp_pack_b_f32(LowpPackedB& out, const float* b, int64_t ldb, int64_t N, int64_t K, bool fp8);

// Packs B(n, k) from E4M3 codes in fp8_pairs_codes' layout (a Wgrad activation saved in FP8):
// B(n, 2kp + i) = the code in byte i of codes[kp·ldc + n], decoded exactly to BF16; its scale of
// K chunk c is sb[n·lds + c]. The same panels as lowp_pack_b_f32(fp8) of the FP32 matrix the
// codes were quantized from, bit for bit.
void lowp_pack_b_e4m3(LowpPackedB& out, const uint16_t* codes, int64_t ldc, const float* sb,
                      int64_t lds, int64_t N, int64_t K);

// C[M, N] (+)= Σ_k A(m, k)·B(n, k) with A given in FP32 and converted inside the product, per
// block of rows (no separate pass over A): A(m, k) = a[m·lda + k] (trans false: an activation,
// as bf16_rows / fp8_rows) or a[k·lda + m] (trans true: the Wgrad dy, as bf16_pairs /
// fp8_pairs); fp8: per row of A and 128-chunk of K, then B must be scaled. Bit for bit the same
// operands and sums as quantizing A first and calling gemm_lowp.
void gemm_lowp_a32(float* C, int64_t ldc, int64_t M, const float* a, int64_t lda, bool trans,
                   bool fp8, const LowpPackedB& B, bool accumulate);

// Plain loops: C[M, N] = Σ_chunks sa·sb·(chunk's sum of A·B) with A [M, K], B [N, K] the E4M3
// values as floats and sa [M, Kc], sb [N, Kc]. acc_bits 0: plain FP32 accumulation; else a
// truncating accumulator of acc_bits significant bits. interval: promotion interval along K (a
// multiple of 128), 0 for none.
void gemm_fp8_emulated(float* C, int64_t M, int64_t N, int64_t K, const float* A, const float* sa,
                       const float* B, const float* sb, int64_t interval, int acc_bits);

}  // namespace dsv3::cpu
