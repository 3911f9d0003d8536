// linear.hpp on the CPU, on one copy of the weight: the stored one (the checkpoint's bytes, in
// huge-page memory or mmapped). Nothing is packed or dequantized at construction.
//   small M (decode): the AVX-512 GEMV kernels read the stored weight (gemv.cpp; FP8 codes are
//                     widened in registers by gemv_fp8.cpp: to FP32 for Compute::F32, to BF16
//                     for Compute::BF16 at 1-2 rows).
//   M up to a few dozen (batched decode), Compute::BF16: the skinny BF16 GEMM (gemm_skinny.cpp)
//                     reads each stored BF16 weight row once for all rows (FP8: on the tiles the
//                     tiled path below converts).
//   large M, BF16 weight and Compute::BF16: one oneDNN matmul (brgemm) whose weight descriptor is
//                     the stored [out, in] row-major array itself (Wᵀ in layout "ba"); brgemm
//                     copies each K×N block it needs into its VNNI form in its scratchpad, in
//                     cache, per call.
//   large M, FP8 weight and Compute::BF16: gemm_fp8.cpp's vdpbf16ps GEMM (128×512 blocks of the
//                     weight converted one at a time into a buffer in L2, scales on the sums);
//                     from kFp8PackMinM rows, the weight converted whole (code·scale rounded to
//                     BF16) into this thread's buffer in oneDNN's packed layout, per call, and
//                     one oneDNN matmul on it: the buffer is transient (2 bytes per parameter of
//                     the largest FP8 weight, per thread that runs one), not a second copy.
//   large M, other storage/compute pairs (FP8 under Compute::F32, or F32 under Compute::BF16;
//                     and FP8 at skinny M): the output rows go in tiles of kTileRows; each thread
//                     converts a tile of the stored weight to the compute dtype (FP8 codes · block
//                     scale, rounded once) in a small buffer that stays in cache and runs the
//                     product on it (oneDNN BF16 matmul or sgemm, on that thread).
//   F32 weight and Compute::F32: dnnl_sgemm on the stored weight.
// Until 2026-12-07 a packed copy was made per weight (BF16 [in, out] in oneDNN's blocked layout
// for Compute::BF16, FP32 for Compute::F32 on BF16/FP8): 2 or 4 more bytes per parameter, the
// resident size of a BF16 model 2x and of an FP8 one 2.9x its checkpoint.
// Primitives: a matmul primitive depends on (M, N, K, dtype, accumulate, threads, output stride),
// not on the weight, so one process-wide cache serves every weight of a shape.
#include "backend/cpu/linear.hpp"

#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>

#include <dnnl.hpp>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "backend/cpu/gemm_fp8.hpp"
#include "backend/cpu/gemm_skinny.hpp"
#include "backend/cpu/gemv.hpp"
#include "backend/cpu/gemv_fp8.hpp"
#include "backend/cpu/linear_lowp.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {
namespace {

using dnnl::memory;
using mdt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// Rows up to which linear_forward takes the GEMV path. Measured on 1 thread with cold weights
// (2816×1024 and 1024×2816): FP8 GEMV beats BF16 brgemm up to M = 2, BF16 GEMV ties it at M ≤ 2,
// and from M = 3 brgemm wins (the GEMV does FP32 FMAs, half the BF16 rate, and re-decodes the
// weight per 4 activation rows). FP32 GEMV vs packed FP32 brgemm crosses at the same M.
constexpr int64_t kGemvMaxM_BF16 = 2;
constexpr int64_t kGemvMaxM_F32 = 2;
// Compute::BF16 between the GEMV and oneDNN, measured per M with bench_kernels' decode_batch
// entries (cold weights, 2 threads, the three bench shapes; docs/benchmarks.md):
//   BF16 weights: the skinny BF16 GEMM (gemm_skinny.hpp) beats oneDNN at every M from 2 to 32
//     (1.2-2.7x) and the GEMV from 3 (M = 2 is a tie, so the GEMV keeps it and its FP32 math);
//   FP8 weights: the FP8 GEMV keeps M ≤ 8; from 9 rows gemm_fp8.cpp's GEMM, 1.3-1.4x faster
//     than the skinny GEMM on converted 128-row tiles at M = 16 and 32 (1 thread, 2026-12-07).
// Beyond 32 rows oneDNN (not measured further: prefill chunks are hundreds of rows).
constexpr int64_t kGemvMaxM_FP8 = 8;
constexpr int64_t kSkinnyMaxM = 32;
// FP8 weights under Compute::BF16 from this many rows: the weight converted whole per call into
// oneDNN's packed layout (fp8_packed_forward) instead of gemm_fp8_bf16. bench_kernels' prefill
// sweep (1 and 2 threads, warm and cold weights, 2026-12-08, docs/benchmarks.md): the packed
// route was 4-23% faster from M = 192 (one case 5% slower: 32000 × 1024 warm on one thread),
// within -7..+8% at 96-128, and 1-11% slower at 48 (converting and writing the whole weight
// costs more there than oneDNN's kernel gains over gemm_fp8_bf16's).
constexpr int64_t kFp8PackMinM = 192;
// Output rows per converted tile on the tiled path: one FP8 scale block; a BF16 tile of K = 2816
// is 704 KiB, within a core's L2.
constexpr int64_t kTileRows = 128;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
// Streams are cheap and not meant to be shared between threads.
dnnl::stream& thread_stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

// oneDNN fixes a primitive's thread count when it is created (omp_get_max_threads() then), so
// the count is part of the key: a primitive made on 1 thread would run on 1 thread forever.
struct PrimKey {
  int64_t M, N, K;
  mdt dt;
  bool acc;
  int threads;
  int64_t ldy;  // row stride of the output (N, or more for a tile of a wider output)
  bool packed;  // weight in oneDNN's blocked layout BA16a64b2a (gemm_fp8_pack_bf16), else "ba"
  bool operator==(const PrimKey&) const = default;
};
struct PrimKeyHash {
  size_t operator()(const PrimKey& k) const {
    size_t h = std::hash<int64_t>()(k.M);
    h = h * 1000003u ^ std::hash<int64_t>()(k.N);
    h = h * 1000003u ^ std::hash<int64_t>()(k.K);
    h = h * 1000003u ^ std::hash<int64_t>()(k.ldy);
    return ((h * 31u + size_t(k.dt) * 2u + size_t(k.acc)) * 257u + size_t(k.threads)) * 2u +
           size_t(k.packed);
  }
};

// A cached matmul and the scratchpad bytes it needs. Primitives run with a user scratchpad:
// in oneDNN's default "library" mode the scratchpad is shared between primitives unless the
// library was built with DNNL_ENABLE_CONCURRENT_EXEC (Debian's is not), so two threads executing
// matmuls at once overwrote each other's scratch (Linear.ConcurrentCalls failed ~15% of runs).
struct CachedMatmul {
  dnnl::matmul prim;
  size_t scratch_bytes = 0;
};

class PrimCache {
 public:
  // The matmul for x[M, K] (dt) · Wᵀ (W [N, K] row-major, dt) → y[M, N] f32 with row stride
  // ldy, y += when acc.
  const CachedMatmul& get(const PrimKey& k) {
    {
      std::shared_lock lock(mu_);
      auto it = map_.find(k);
      if (it != map_.end()) return it->second;
    }
    // Created outside the lock (~0.3 ms); a concurrent creator of the same key is harmless.
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (k.acc) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    memory::desc src({k.M, k.K}, k.dt, tag::ab),
        wmd({k.K, k.N}, k.dt, k.packed ? tag::BA16a64b2a : tag::ba);
    memory::desc dst({k.M, k.N}, mdt::f32, memory::dims{k.ldy, 1});
    // The packed route writes the layout itself (gemm_fp8_pack_bf16): its size says the padding.
    DSV3_ASSERT(
        !k.packed || wmd.get_size() == size_t(fp8_pack_cols(k.K) * ((k.N + 63) / 64 * 64) * 2),
        "oneDNN's BA16a64b2a [{}, {}] is {} bytes, not what gemm_fp8_pack_bf16 writes", k.K, k.N,
        wmd.get_size());
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wmd, dst), attr, engine());
    CachedMatmul m{dnnl::matmul(pd), pd.scratchpad_desc().get_size()};
    std::unique_lock lock(mu_);
    return map_.try_emplace(k, std::move(m)).first->second;
  }

 private:
  std::shared_mutex mu_;
  std::unordered_map<PrimKey, CachedMatmul, PrimKeyHash> map_;
};

PrimCache& prim_cache() {
  static PrimCache c;
  return c;
}

// Rounds rows of x [M, K] to BF16 (round to nearest even, NaN stays NaN).
void round_to_bf16(uint16_t* dst, const float* x, int64_t M, int64_t K) {
  parallel_for(
      M,
      [&](int64_t m0, int64_t m1) {
        const int64_t n = (m1 - m0) * K;
        const float* s = x + m0 * K;
        uint16_t* d = dst + m0 * K;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + i)));
        for (; i < n; ++i) d[i] = f32_to_bf16(s[i]);
      },
      std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)));
}

}  // namespace

// Nothing beyond the view and what was found in it is kept (no copy of the weight).
struct LinearWeight::Impl {
  bool fp8_has_nan = false;  // FP8 codes 0x7f/0xff present: the GEMV takes the patching variant
};

LinearWeight::LinearWeight(const WeightView& w, Compute c) : view_(w), compute_(c) {
  DSV3_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F8_E4M3,
             "linear weight: dtype {} unsupported (F32, BF16 or F8_E4M3)", dtype_name(w.dtype));
  DSV3_CHECK(w.rows >= 0 && w.cols >= 0, "linear weight: bad shape [{}, {}]", w.rows, w.cols);
  DSV3_CHECK(w.data || w.rows * w.cols == 0, "linear weight: null data");
  DSV3_CHECK(w.dtype != DType::F8_E4M3 || w.scale_inv || w.rows * w.cols == 0,
             "linear weight: FP8 weight [{}, {}] without scale_inv", w.rows, w.cols);
  impl_ = std::make_unique<Impl>();
  if (w.dtype == DType::F8_E4M3)
    impl_->fp8_has_nan = fp8_has_nan_code(static_cast<const uint8_t*>(w.data), w.rows * w.cols);
}
LinearWeight::LinearWeight() = default;
LinearWeight::~LinearWeight() = default;
LinearWeight::LinearWeight(LinearWeight&&) noexcept = default;
LinearWeight& LinearWeight::operator=(LinearWeight&&) noexcept = default;

size_t LinearWeight::stored_bytes() const {
  size_t n = size_t(view_.rows * view_.cols) * dtype_size(view_.dtype);
  if (view_.dtype == DType::F8_E4M3)
    n += size_t((view_.rows + 127) / 128 * ((view_.cols + 127) / 128)) * 4;
  return n;
}

void linear_prefetch(const LinearWeight& w) {
  const WeightView& v = w.view();
  const int64_t bytes = v.rows * v.cols * int64_t(dtype_size(v.dtype));
  if (!v.data || bytes <= 0) return;
  const int64_t head = std::min<int64_t>(bytes, 4096);
  const char* front = static_cast<const char*>(v.data);
  for (int64_t b = 0; b < head; b += 64) _mm_prefetch(front + b, _MM_HINT_T0);
  if (region_threads() > 1)
    for (int64_t b = bytes - head; b < bytes; b += 64) _mm_prefetch(front + b, _MM_HINT_T0);
  if (v.dtype == DType::F8_E4M3 && v.scale_inv) {
    const char* sp = reinterpret_cast<const char*>(v.scale_inv);
    const int64_t sb = ((v.rows + 127) / 128) * ((v.cols + 127) / 128) * 4;
    for (int64_t b = 0; b < sb; b += 64) _mm_prefetch(sp + b, _MM_HINT_T0);
  }
}

int64_t linear_gemv_max_m(Compute c) {
  return c == Compute::BF16 ? kGemvMaxM_BF16 : kGemvMaxM_F32;
}

std::vector<float> dequantize(const WeightView& w) {
  std::vector<float> out(size_t(w.rows * w.cols));
  to_f32(out.data(), w.data, w.dtype, out.size());
  if (w.dtype == DType::F8_E4M3) {
    DSV3_ASSERT(w.scale_inv, "fp8 weight without scale_inv");
    const int64_t sc = (w.cols + 127) / 128;
    for (int64_t r = 0; r < w.rows; ++r)
      for (int64_t c = 0; c < w.cols; ++c)
        out[r * w.cols + c] *= w.scale_inv[(r / 128) * sc + c / 128];
  }
  return out;
}

namespace {

// Runs the cached matmul y[M, N] (row stride ldy) (+)= src[M, K] · Wᵀ, W [N, K] row-major.
// packed: W is Wᵀ in layout BA16a64b2a (gemm_fp8_pack_bf16).
void run_matmul(float* y, int64_t ldy, const void* src, const void* W, int64_t M, int64_t N,
                int64_t K, mdt dt, bool acc, bool packed = false) {
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const CachedMatmul& mm = prim_cache().get({M, N, K, dt, acc, threads, ldy, packed});
  memory src_m(memory::desc({M, K}, dt, tag::ab), engine(), const_cast<void*>(src));
  memory w_m(memory::desc({K, N}, dt, packed ? tag::BA16a64b2a : tag::ba), engine(),
             const_cast<void*>(W));
  memory dst_m(memory::desc({M, N}, mdt::f32, memory::dims{ldy, 1}), engine(), y);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, dst_m}};
  if (mm.scratch_bytes > 0) {
    thread_local std::vector<uint8_t> scratch;  // this thread's matmul scratchpad; grows
    if (scratch.size() < mm.scratch_bytes) scratch.resize(mm.scratch_bytes);
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(memory::desc({int64_t(mm.scratch_bytes)}, mdt::u8, tag::a), engine(),
                        scratch.data()));
  }
  dnnl::stream& s = thread_stream();
  mm.prim.execute(s, args);
  s.wait();
}

// FP8 under Compute::BF16 from kFp8PackMinM rows (see the file comment): the weight converted
// whole into this thread's buffer in oneDNN's blocked layout, then oneDNN's matmul on it.
void fp8_packed_forward(float* y, const uint16_t* xb, int64_t M, const WeightView& v, bool has_nan,
                        bool acc) {
  const int64_t N = v.rows, K = v.cols;
  const size_t n = size_t(fp8_pack_cols(K) * ((N + 63) / 64 * 64));
  // The packed weight; grows to the largest, reused. At a 64-byte boundary: malloc's 16 would
  // split every vector load of oneDNN's kernel over two cache lines.
  thread_local std::vector<uint16_t> wp;
  uint16_t* w = grow_aligned64(wp, n);
  gemm_fp8_pack_bf16(w, v, has_nan);
  run_matmul(y, N, xb, w, M, N, K, mdt::bf16, acc, true);
}

// The tiled path (see the file comment): tiles of kTileRows output rows over the threads, each
// converted to the compute dtype in this thread's buffer, then multiplied.
void tiled_forward(float* y, const float* x, const void* xb, int64_t M, const WeightView& v,
                   Compute c, bool acc, bool skinny) {
  const int64_t N = v.rows, K = v.cols, tiles = (N + kTileRows - 1) / kTileRows;
  parallel_for(tiles, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> buf;  // one tile: [kTileRows, K] of the compute dtype
    if (buf.size() < size_t(kTileRows * K)) buf.resize(size_t(kTileRows * K));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTileRows, n1 = std::min(N, n0 + kTileRows), nt = n1 - n0;
      if (c == Compute::BF16) {
        auto* tb = reinterpret_cast<uint16_t*>(buf.data());
        if (v.dtype == DType::F8_E4M3)
          fp8_rows_to_bf16(tb, v, n0, n1);
        else  // F32 storage
          from_f32(tb, static_cast<const float*>(v.data) + n0 * K, DType::BF16, size_t(nt * K));
        if (skinny)  // xb from skinny_round_x
          skinny_rows(y + n0, N, static_cast<const uint16_t*>(xb), M, tb, K, 0, nt, acc);
        else
          run_matmul(y + n0, N, xb, tb, M, nt, K, mdt::bf16, acc);
      } else {
        if (v.dtype == DType::F8_E4M3)
          fp8_rows_to_f32(buf.data(), v, n0, n1);
        else  // BF16 storage
          bf16_rows_to_f32(buf.data(), v, n0, n1);
        gemm_f32(false, true, M, nt, K, 1.0f, x, K, buf.data(), K, acc ? 1.0f : 0.0f, y + n0, N);
      }
    }
  });
}

}  // namespace

LinearPath linear_path(int64_t M, const LinearWeight& w) {
  const DType dt = w.view().dtype;
  if (M <= linear_gemv_max_m(w.compute())) return LinearPath::Gemv;
  if (dt == DType::F8_E4M3 && w.compute() == Compute::BF16 && M >= kFp8PackMinM)
    return LinearPath::Fp8Packed;
  if (w.compute() != Compute::BF16 || dt == DType::F32 || M > kSkinnyMaxM) return LinearPath::Gemm;
  if (dt == DType::F8_E4M3) return M <= kGemvMaxM_FP8 ? LinearPath::Gemv : LinearPath::Gemm;
  return LinearPath::Skinny;
}

void linear_forward(float* y, const float* x, int64_t M, const LinearWeight& w, bool accumulate) {
  if (w.lowp()) {
    lowp_forward(y, x, M, *w.lowp(), accumulate);
    return;
  }
  linear_forward_path(y, x, M, w, accumulate, linear_path(M, w));
}

// FP8 on the BF16 route: gemv_fp8_bf16 on the rows' own view picks its exponent e from the
// rows' block scales rather than the whole weight's; e only moves the range the products are
// summed in (a power of two, exact), so the sums are the same unless they reach FP32's
// subnormal range.
void linear_forward_rows(float* y, const float* x, const LinearWeight& w, int64_t n0, int64_t n1) {
  const LinearWeight::Impl* im = w.impl();
  DSV3_CHECK(im && !w.lowp(), "linear_forward_rows: empty weight or one with a training copy");
  const WeightView& v = w.view();
  DSV3_CHECK(0 <= n0 && n0 <= n1 && n1 <= v.rows, "linear_forward_rows: rows [{}, {}) of {}", n0,
             n1, v.rows);
  if (n0 == n1) return;
  if (v.cols == 0) {
    std::fill(y + n0, y + n1, 0.0f);
    return;
  }
  if (v.dtype != DType::F8_E4M3) {
    gemv_rows_m(y, v.rows, x, v.cols, 1, v, n0, n1, false);
    return;
  }
  DSV3_CHECK(n0 % 128 == 0, "linear_forward_rows: FP8 rows from {} (not a scale block start)", n0);
  const int64_t sc = (v.cols + 127) / 128;
  const WeightView rows{v.dtype, n1 - n0, v.cols, static_cast<const uint8_t*>(v.data) + n0 * v.cols,
                        v.scale_inv + (n0 / 128) * sc};
  if (w.compute() == Compute::BF16)
    gemv_fp8_bf16(y + n0, x, 1, rows, im->fp8_has_nan, false);
  else
    gemv_fp8(y + n0, x, 1, rows, im->fp8_has_nan, false);
}

void linear_forward_path(float* y, const float* x, int64_t M, const LinearWeight& w,
                         bool accumulate, LinearPath path) {
  if (w.lowp()) {
    lowp_forward(y, x, M, *w.lowp(), accumulate);
    return;
  }
  const LinearWeight::Impl* im = w.impl();
  DSV3_CHECK(im, "linear_forward: empty LinearWeight");
  const WeightView& v = w.view();
  const int64_t N = v.rows, K = v.cols;
  if (M <= 0 || N == 0) return;
  if (K == 0) {  // empty sums
    if (!accumulate) std::fill(y, y + M * N, 0.0f);
    return;
  }
  if (path == LinearPath::Gemv) {
    // FP8 under Compute::BF16: BF16 arithmetic for the 1-2 rows of a decode step (measured
    // against the exact route there), the exact FP32 route for the 3..8 rows batched decode
    // hands the GEMV (the crossover against the skinny GEMM was measured with it).
    if (v.dtype == DType::F8_E4M3 && w.compute() == Compute::BF16 && M <= kGemvMaxM_BF16)
      gemv_fp8_bf16(y, x, M, v, im->fp8_has_nan, accumulate);
    else if (v.dtype == DType::F8_E4M3)
      gemv_fp8(y, x, M, v, im->fp8_has_nan, accumulate);
    else
      gemv_forward(y, x, M, v, accumulate);
    return;
  }
  const bool bf16 = w.compute() == Compute::BF16;
  const bool skinny = path == LinearPath::Skinny;
  DSV3_CHECK(!skinny || (bf16 && v.dtype != DType::F32),
             "linear_forward: the skinny BF16 GEMM takes BF16 or FP8 weights under "
             "Compute::BF16, not a {} weight [{}, {}] under Compute::{}",
             dtype_name(v.dtype), N, K, bf16 ? "BF16" : "F32");
  if (skinny && v.dtype == DType::BF16) {
    gemm_skinny_bf16(y, x, M, v, accumulate);
    return;
  }
  const bool packed = path == LinearPath::Fp8Packed;
  DSV3_CHECK(!packed || (bf16 && v.dtype == DType::F8_E4M3),
             "linear_forward: the packed FP8 route takes FP8 weights under Compute::BF16, not a "
             "{} weight [{}, {}] under Compute::{}",
             dtype_name(v.dtype), N, K, bf16 ? "BF16" : "F32");
  if (bf16 && !skinny && !packed && v.dtype == DType::F8_E4M3) {  // converts per block, in cache
    gemm_fp8_bf16(y, N, x, M, v, im->fp8_has_nan, accumulate);
    return;
  }
  if (!bf16 && v.dtype == DType::F32) {  // sgemm reads the stored weight in place
    gemm(false, true, M, N, K, 1.0f, x, K, static_cast<const float*>(v.data), K,
         accumulate ? 1.0f : 0.0f, y, N);
    return;
  }
  // [M, K] BF16 activations (skinny: rows of skinny_ldx(K), zero-padded); grows, then reused.
  thread_local std::vector<uint16_t> xb;
  if (skinny) {
    if (xb.size() < size_t(M * skinny_ldx(K))) xb.resize(size_t(M * skinny_ldx(K)));
    skinny_round_x(xb.data(), x, M, K);
  } else if (bf16) {
    if (xb.size() < size_t(M * K)) xb.resize(size_t(M * K));
    round_to_bf16(xb.data(), x, M, K);
  }
  if (packed)
    fp8_packed_forward(y, xb.data(), M, v, im->fp8_has_nan, accumulate);
  else if (bf16 && v.dtype == DType::BF16)
    run_matmul(y, N, xb.data(), v.data, M, N, K, mdt::bf16, accumulate);
  else
    tiled_forward(y, x, xb.data(), M, v, w.compute(), accumulate, skinny);
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) {
  if (M == 0 || N == 0) return;
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
  DSV3_ASSERT(st == dnnl_success, "dnnl_sgemm failed ({})", int(st));
}

// Training GEMMs are timed as `gemm_s` unless an enclosing phase (attention, experts) times its
// own, or they run inside a parallel region (per-expert products).
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const bool own = profiling() && !omp_in_parallel() && !gemm_grouped();
  ProfileScope ps(own ? &StepProfile::gemm_s : nullptr);
  if (own) ++step_profile().gemm_calls;
  gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
    }
}

void linear_forward(double* y, const double* x, int64_t M, const DenseWeight<double>& w,
                    bool accumulate) {
  gemm(false, true, M, w.rows, w.cols, 1.0, x, w.cols, w.data, w.cols, accumulate ? 1.0 : 0.0, y,
       w.rows);
}

void linear_backward_input(float* dx, const float* dy, int64_t M, const LinearWeight& w,
                           bool accumulate) {
  if (w.lowp()) {
    lowp_backward_input(dx, dy, M, *w.lowp(), accumulate);
    return;
  }
  const WeightView& v = w.view();
  DSV3_CHECK(v.dtype == DType::F32,
             "linear backward: weight [{}, {}] is stored as {}; training needs F32 weights", v.rows,
             v.cols, dtype_name(v.dtype));
  gemm(false, false, M, v.cols, v.rows, 1.0f, dy, v.rows, static_cast<const float*>(v.data), v.cols,
       accumulate ? 1.0f : 0.0f, dx, v.cols);
}

void linear_backward_weight(float* dW, const float* dy, const float* x, int64_t M, int64_t in,
                            int64_t out) {
  if (M == 0) return;
  const Precision p = wgrad_precision();
  if (p != Precision::F32) {
    lowp_backward_weight(dW, dy, x, M, in, out, p);
    return;
  }
  gemm(true, false, out, in, M, 1.0f, dy, out, x, in, 1.0f, dW, in);
}

void linear_backward_input(double* dx, const double* dy, int64_t M, const DenseWeight<double>& w,
                           bool accumulate) {
  gemm(false, false, M, w.cols, w.rows, 1.0, dy, w.rows, w.data, w.cols, accumulate ? 1.0 : 0.0, dx,
       w.cols);
}

}  // namespace dsv3::cpu
