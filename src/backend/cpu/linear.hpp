// Linear layers and GEMMs on the CPU: y = x·Wᵀ with W [out, in] stored as F32, BF16 or FP8 e4m3
// with 128×128 block scales (DeepSeek-V3 release layout). Accumulation is always FP32.
//
// Compute::F32  every product is FP32 arithmetic on the effective weight (bf16 widened, fp8
//               dequantized): matches a float32 reference to rounding.
// Compute::BF16 products of more than 2 rows round the activations to BF16 and run a BF16 GEMM
//               (FP32 accumulation), as production inference does (up to a few dozen rows: the
//               skinny GEMM that reads the weight once); 1-2 rows (decode) are memory-bound and
//               stay FP32 arithmetic on the stored weight, except on FP8 weights: there x·scale
//               is rounded to BF16 once and the exact BF16 widening of the codes is summed by
//               vdpbf16ps (gemv_fp8_bf16: 1.4× the FP32 route's streaming rate on one core).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.hpp"

namespace dsv3::cpu {

enum class Compute { F32, BF16 };
class LowpWeight;  // linear_lowp.hpp

// A weight as stored (not owned): [rows=out, cols=in], row-major.
struct WeightView {
  DType dtype = DType::F32;  // F32, BF16 or F8_E4M3
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
  const float* scale_inv = nullptr;  // F8_E4M3 only: [ceil(rows/128), ceil(cols/128)]
};

// A weight ready for products: the stored weight itself (no packed or converted copy; see
// linear.cpp) and what was found in it once. Immutable after construction, so one instance is
// shared by all threads.
class LinearWeight {
 public:
  LinearWeight();
  LinearWeight(const WeightView& w, Compute c);
  ~LinearWeight();
  LinearWeight(LinearWeight&&) noexcept;
  LinearWeight& operator=(LinearWeight&&) noexcept;

  int64_t out() const { return view_.rows; }
  int64_t in() const { return view_.cols; }
  const WeightView& view() const { return view_; }
  Compute compute() const { return compute_; }
  // Bytes read per full pass over the stored weight (for bandwidth accounting).
  size_t stored_bytes() const;

  struct Impl;
  Impl* impl() const { return impl_.get(); }

  // Training in BF16/FP8 (linear_lowp.hpp): linear_forward and linear_backward_input run on
  // these low-precision copies of the (F32) weight while set; null: the weight as viewed.
  void set_lowp(const LowpWeight* w) { lowp_ = w; }
  const LowpWeight* lowp() const { return lowp_; }

 private:
  const LowpWeight* lowp_ = nullptr;
  WeightView view_;
  Compute compute_ = Compute::F32;
  std::unique_ptr<Impl> impl_;
};

// y[M, out] = x[M, in] · Wᵀ (+ y if accumulate). x, y FP32 row-major with leading dims in / out.
// M ≤ linear_gemv_max_m(compute) runs a GEMV (FP32 arithmetic, memory-bound); larger M a skinny
// BF16 GEMM (Compute::BF16, up to a few dozen rows) or a GEMM. All read the stored weight.
// Thread-safe: concurrent calls (on the same or different weights) are fine; inside an OpenMP
// parallel region a call runs on the calling thread only.
void linear_forward(float* y, const float* x, int64_t M, const LinearWeight& w,
                    bool accumulate = false);

// Rows [n0, n1) of a one-row decode product, y[n] = x·W[n]ᵀ for n in [n0, n1) (y is the full
// [out] row), on the calling thread, with the kernels linear_forward uses at M = 1 (so the same
// values, up to the range of FP8's BF16 route: see linear.cpp). For splitting a decode step's
// products into pieces that threads claim one at a time. FP8 weights: n0 a multiple of 128 (a
// scale block). Not for weights with a low-precision training copy set.
void linear_forward_rows(float* y, const float* x, const LinearWeight& w, int64_t n0, int64_t n1);

// Asks the memory system for the start of w's decode product ahead of the call (its first and,
// on a team of two, last 4 KiB, and the FP8 block scales): a decode step is a chain of short
// GEMVs, each of which would otherwise begin with a wait for DRAM. Only a hint; no effect on y.
void linear_prefetch(const LinearWeight& w);

// Largest M that linear_forward treats as decode (FP32 products on the stored weight).
int64_t linear_gemv_max_m(Compute c);

// The kernels linear_forward chooses between by M (see linear.cpp): the GEMV (FP32 products on
// the stored weight), the skinny BF16 GEMM (gemm_skinny.hpp: Compute::BF16 on BF16 or FP8
// weights) and the GEMM (oneDNN). linear_path is linear_forward's choice; linear_forward_path runs
// a given one (benchmarks and tests compare them at equal M). Fp8Packed: FP8 weights under
// Compute::BF16, the weight converted whole per call into oneDNN's packed BF16 layout
// (gemm_fp8_pack_bf16: code·scale rounded to BF16) in a per-thread buffer and oneDNN's matmul on
// it; Gemm on an FP8 weight under Compute::BF16 is gemm_fp8_bf16 (exact codes, scales on the
// sums). Skinny or Fp8Packed on a weight it does not take (F32 storage or Compute::F32; Fp8Packed:
// anything but FP8 under Compute::BF16) is an error.
enum class LinearPath { Gemv, Skinny, Gemm, Fp8Packed };
LinearPath linear_path(int64_t M, const LinearWeight& w);
void linear_forward_path(float* y, const float* x, int64_t M, const LinearWeight& w,
                         bool accumulate, LinearPath path);

// Row-major FP32 GEMM: C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C.
// op(X) = Xᵀ when trans_x. Leading dimensions are the row strides of the stored matrices.
void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc);

// Effective FP32 weight [rows, cols] (bf16 widened, fp8 block-dequantized).
std::vector<float> dequantize(const WeightView& w);

// ---- The products of training, generic over the scalar type ----
// float runs on LinearWeight (the one weight view of the model; training arenas are F32 views,
// so nothing is copied) and oneDNN's sgemm; double runs plain loops on DenseWeight and drives the
// finite-difference gradient checks. A linear layer's backward is two functions, the input part
// and the weight part, because pipeline schedules (DualPipe, zero bubble) defer the weight part
// (DeepSeek-V3 report §3.2.1).

// A plain row-major matrix [rows=out, cols=in] of S (the double twin of an F32 LinearWeight).
template <typename S>
struct DenseWeight {
  const S* data = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t out() const { return rows; }
  int64_t in() const { return cols; }
};
// (FP64 reference weights: no decode path to prefetch for.)
template <typename S>
void linear_prefetch(const DenseWeight<S>&) {}

// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C, row-major with leading dimensions.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// y[M, out] = x[M, in] · Wᵀ (+ y when accumulate): the double twin of linear_forward above.
void linear_forward(double* y, const double* x, int64_t M, const DenseWeight<double>& w,
                    bool accumulate = false);

// dx[M, in] (+)= dy[M, out] · W. Reads W only. Training runs on F32 weights; another storage
// is refused (a BF16/FP8 checkpoint is trained from its F32 arena copy).
void linear_backward_input(float* dx, const float* dy, int64_t M, const LinearWeight& w,
                           bool accumulate = false);
void linear_backward_input(double* dx, const double* dy, int64_t M, const DenseWeight<double>& w,
                           bool accumulate = false);

// dW[out, in] += dy[M, out]ᵀ · x[M, in]. Reads the saved input x. The float one runs in the
// precision of the enclosing WgradPrecision scope (linear_lowp.hpp), FP32 outside any.
void linear_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                            int64_t out);
inline void linear_backward_weight(double* dW, const double* dy, const double* x, int64_t M,
                                   int64_t in, int64_t out) {
  if (M == 0) return;
  gemm(true, false, out, in, M, 1.0, dy, out, x, in, 1.0, dW, in);
}

}  // namespace dsv3::cpu
