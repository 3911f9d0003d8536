// Mixed-precision training of the linear layers (DeepSeek-V3 report §3.3): the three GEMMs of a
// linear layer y = x·Wᵀ — Fprop (y), Dgrad (dx = dy·W) and Wgrad (dW += dyᵀ·x) — with
// low-precision inputs and FP32 accumulation, on FP32 master weights and FP32 gradients.
//
//   F32   every product in FP32 (oneDNN sgemm): the reference.
//   BF16  inputs rounded to BF16 (nearest even), FP32 accumulation (gemm_lowp.hpp).
//   FP8   inputs quantized to E4M3 as the report does: activations and activation gradients per
//         1×128 tile (per token, per 128 channels), weights per 128×128 block, and the Wgrad
//         operands dyᵀ and xᵀ per 128×1 tile along the tokens (their K axis); scales from the
//         tile's max-abs; FP32 accumulation with promotion every 128 along K.
//
// Which layers: every linear layer of the decoder and the MTP modules (attention projections,
// dense and expert MLPs, eh_proj). The output heads take BF16 inputs in both modes (the report
// keeps them in the "original precision" of its BF16 baseline). Kept in FP32: embedding, MoE
// router (gating), norms, attention's core (scores, softmax, P·V), the optimizer.
//
// A LowpWeight holds one weight's low-precision copies (W as rows for Fprop, as K pairs for Dgrad,
// with their scales in FP8, and both packed for the kernel), refreshed from the FP32 master
// weight before each step; the activation operands are converted inside the GEMM, per block of
// rows (gemm_lowp_a32), and the Wgrad activation while it is packed (lowp_pack_b_f32), or it is
// read as the model saved it in the forward (SavedAct: BF16, E4M3 codes, E5M6); a
// LinearWeight points at it (LinearWeight::set_lowp) and linear_forward / linear_backward_input
// then run through it. The Wgrad GEMM (linear_backward_weight) has no weight argument: it takes the
// precision of the WgradPrecision scope that the training step holds (process-wide; the expert
// GEMMs run on OpenMP worker threads), F32 outside any scope. The router computes its weight
// gradient with cpu::gemm, so it stays FP32; the heads call lowp_backward_weight in BF16
// themselves.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/cpu/gemm_lowp.hpp"

namespace dsv3::cpu {

enum class Precision { F32, BF16, FP8 };
const char* precision_name(Precision p);          // "fp32" | "bf16" | "fp8"
Precision parse_precision(const std::string& s);  // throws dsv3::Error on anything else

class LowpWeight {
 public:
  // Converts the FP32 weight w [rows=out, cols=in] for precision p (BF16 or FP8).
  void refresh(const float* w, int64_t rows, int64_t cols, Precision p);
  Precision precision() const { return p_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  size_t bytes() const;

  // Operands (quant_train.hpp layouts): w [rows, pad(cols)] for Fprop; wp, W in the pairs
  // layout [ceil(rows/2), cols] for Dgrad (K = out). FP8 scales per row of the operand and
  // 128-chunk of K: sw [rows, tiles(cols)], swt [cols, tiles(rows)]; sblock the 128×128 blocks'.
  std::vector<uint16_t> w;
  std::vector<uint32_t> wp;
  std::vector<float> sw, swt, sblock;
  // The same operands packed for gemm_lowp_a32 once per refresh: Fprop (N = out, K = in) and
  // Dgrad (N = in, K = out), so no call packs the weight again.
  LowpPackedB fprop, dgrad;

 private:
  Precision p_ = Precision::F32;
  int64_t rows_ = 0, cols_ = 0;
};

// y[M, out] (+)= x[M, in]·Wᵀ.
void lowp_forward(float* y, const float* x, int64_t M, const LowpWeight& w, bool accumulate);
// dx[M, in] (+)= dy[M, out]·W.
void lowp_backward_input(float* dx, const float* dy, int64_t M, const LowpWeight& w,
                         bool accumulate);
// dW[out, in] += dy[M, out]ᵀ·x[M, in] in precision p (BF16 or FP8).
void lowp_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                          int64_t out, Precision p);

// Low-precision storage (report §3.3.3): an activation saved in the forward for the Wgrad of the
// linear layers that read it (their input x [rows = tokens, cols = in]), in the form that GEMM
// reads, instead of FP32:
//   BF16  x rounded to BF16 in the pairs layout (bf16_pairs; 2 bytes per element)
//   FP8   E4M3 codes per 128×1 tile along the tokens with their scales (fp8_pairs_codes: 1 byte
//         per element): the tiling of the Wgrad GEMM, quantized once in the forward
//   E5M6  per 1×128 tile with power-of-two scales (e5m6_rows; 2 bytes): the input of the linear
//         after attention under FP8, the report's choice for it
// BF16 and FP8 give the Wgrad bit for bit what lowp_backward_weight computes from the FP32 x (it
// converts x the same way inside the GEMM): a memory change, not a numerics one. E5M6 rounds x
// before the GEMM's own FP8 quantization (7 significant bits, relative error ≤ 2^-7).
enum class ActForm { F32, BF16, FP8, E5M6 };

class SavedAct {
 public:
  // x [rows, cols] in form f (not F32).
  void save(const float* x, int64_t rows, int64_t cols, ActForm f);
  void release();  // frees the storage; form() is F32 after
  ActForm form() const { return form_; }
  bool saved() const { return form_ != ActForm::F32; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  size_t bytes() const { return bf16_.size() * 4 + h_.size() * 2 + scale_.size() * 4; }
  // x back in FP32 (E5M6: its values; BF16/FP8: the rounded/dequantized values), x [rows, cols].
  void decode(float* x) const;

 private:
  friend void lowp_backward_weight(float*, const float*, const SavedAct&, int64_t, Precision);
  ActForm form_ = ActForm::F32;
  int64_t rows_ = 0, cols_ = 0;
  std::vector<uint32_t> bf16_;  // BF16: [ceil(rows/2), cols] pairs
  std::vector<uint16_t> h_;     // FP8: code pairs [ceil(rows/2), cols]; E5M6: [rows, cols]
  std::vector<float> scale_;    // FP8: [cols, quant_tiles(rows)]; E5M6: [rows, quant_tiles(cols)]
};

// dW[out, in] += dy[M, out]ᵀ·x for a saved x [M, in] in precision p: BF16 x needs p BF16, FP8 x
// p FP8 (read as saved, no FP32 copy); an E5M6 x is decoded, then as lowp_backward_weight.
void lowp_backward_weight(float* dW, const float* dy, const SavedAct& x, int64_t out, Precision p);

// The precision of linear_backward_weight(float) while a scope lives (see the file comment).
Precision wgrad_precision();
// The form the model saves a Wgrad activation in while a scope lives: F32 (no scope, precision
// fp32, or storage off), BF16 under bf16, FP8 under fp8 — E5M6 there for after_attention (the
// input of o_proj).
ActForm saved_act_form(bool after_attention = false);
class WgradPrecision {
 public:
  // lowp_storage: the model saves its Wgrad activations in the precision's form (SavedAct).
  explicit WgradPrecision(Precision p, bool lowp_storage = true);
  ~WgradPrecision();
  WgradPrecision(const WgradPrecision&) = delete;
  WgradPrecision& operator=(const WgradPrecision&) = delete;

 private:
  Precision prev_;
  bool prev_store_;
};

}  // namespace dsv3::cpu
