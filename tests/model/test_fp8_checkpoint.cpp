// FP8 checkpoints as the DeepSeek-V3 release stores them: quantize the tiny-v3 reference model
// with our 128×128 block quantizer, reload it natively, check the dequantized weights and that its
// logits equal those of an FP32 checkpoint holding the same effective weights. Also sharded
// checkpoints (model.safetensors.index.json) load and give the same logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/quant.hpp"
#include "io/safetensors.hpp"
#include "model/export.hpp"
#include "model/model.hpp"

using namespace dsv3;
using namespace dsv3::model;
namespace fs = std::filesystem;

namespace {

std::string tmp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("dsv3_test_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p.string();
}

std::vector<float> run_logits(const std::string& dir, const std::vector<int32_t>& tokens, int64_t B,
                              int64_t T) {
  auto m = Model::load(dir);
  KVCache cache(m->config(), B, T, false);
  std::vector<float> logits(size_t(B * T * m->config().vocab_size));
  m->forward(tokens.data(), B, T, 0, cache, logits.data());
  return logits;
}

// The checkpoint's tensors as FP32, for save_hf_checkpoint.
auto params_of(const io::TensorStore& store) {
  return [&store](const ParamSpec& s, float* dst) {
    auto v = io::read_f32(store.get(s.name, s.shape));
    std::copy(v.begin(), v.end(), dst);
  };
}

// Writes to dir the FP32 checkpoint of the FP8 checkpoint q's effective weights (codes ·
// scale_inv; the tensors it keeps in higher precision as they are).
void save_dequantized(const std::string& dir, const ModelConfig& c, const io::TensorStore& q) {
  auto dequantized = [&](const ParamSpec& s, float* dst) {
    const auto& t = q.get(s.name);
    if (t.dtype != DType::F8_E4M3) {
      auto v = io::read_f32(t);
      std::copy(v.begin(), v.end(), dst);
      return;
    }
    auto scale = io::read_f32(q.get(s.name + "_scale_inv"));
    fp8_block_dequantize(dst, reinterpret_cast<const uint8_t*>(t.data), scale.data(), s.shape[0],
                         s.shape[1]);
  };
  ExportOptions o32;
  o32.dtype = DType::F32;
  save_hf_checkpoint(dir, c, dequantized, o32);
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// tiny-v3 exported as FP8 into fp8_dir and the FP8 checkpoint's effective weights as FP32 into
// f32_dir; both removed at the end of the test.
struct Fp8Pair {
  const std::string src = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  const ModelConfig c = load_config(src);
  const std::string fp8_dir, f32_dir;

  explicit Fp8Pair(const std::string& tag) : fp8_dir(tmp_dir(tag)), f32_dir(tmp_dir(tag + "_f32")) {
    auto store = io::TensorStore::open_dir(src);
    ExportOptions o8;
    o8.dtype = DType::F8_E4M3;
    save_hf_checkpoint(fp8_dir, c, params_of(store), o8);
    save_dequantized(f32_dir, c, io::TensorStore::open_dir(fp8_dir));
  }
  Fp8Pair(const Fp8Pair&) = delete;
  Fp8Pair& operator=(const Fp8Pair&) = delete;
  ~Fp8Pair() {
    fs::remove_all(fp8_dir);
    fs::remove_all(f32_dir);
  }
};

TEST(Fp8Checkpoint, QuantizeReloadAndCompare) {
  const Fp8Pair pair("fp8");
  const std::string &src = pair.src, &fp8_dir = pair.fp8_dir, &f32_dir = pair.f32_dir;
  const ModelConfig& c = pair.c;
  auto store = io::TensorStore::open_dir(src);

  // Every decoder *_proj weight is stored as e4m3 with a [ceil(r/128), ceil(c/128)] scale; the
  // effective weight is float(e4m3) * scale_inv, close to the original.
  auto q = io::TensorStore::open_dir(fp8_dir);
  int n_fp8 = 0;
  for (const auto& s : param_table(c)) {
    const auto& t = q.get(s.name, s.shape);
    if (!s.fp8) {
      EXPECT_NE(t.dtype, DType::F8_E4M3) << s.name;
      continue;
    }
    ++n_fp8;
    ASSERT_EQ(t.dtype, DType::F8_E4M3) << s.name;
    const auto& sc =
        q.get(s.name + "_scale_inv", {(s.shape[0] + 127) / 128, (s.shape[1] + 127) / 128});
    auto scale = io::read_f32(sc);
    auto codes = reinterpret_cast<const uint8_t*>(t.data);
    auto orig = io::read_f32(store.get(s.name));
    const int64_t cols = s.shape[1], sc_cols = sc.shape[1];
    for (int64_t i = 0; i < t.numel(); ++i) {
      const int64_t r = i / cols, col = i % cols;
      const float sinv = scale[size_t((r / 128) * sc_cols + col / 128)];
      const float deq = fp8_e4m3_to_f32(codes[i]) * sinv;
      // e4m3 keeps 3 mantissa bits: relative error <= 2^-4, plus subnormal spacing 2^-9 * scale.
      ASSERT_LE(std::fabs(deq - orig[size_t(i)]),
                std::fabs(orig[size_t(i)]) * 0.0625f + sinv * 0x1p-10f)
          << s.name << " element " << i;
    }
  }
  EXPECT_GT(n_fp8, 100);

  // The same effective weights as FP32 (f32_dir): logits must agree (only summation order
  // differs).

  auto ref = io::TensorStore::open_file(src + "/reference.safetensors");
  auto tokens = io::read_i32(ref.get("tokens"));
  const int64_t B = 2, T = 80;
  auto l8 = run_logits(fp8_dir, tokens, B, T);
  auto l32 = run_logits(f32_dir, tokens, B, T);
  float d = max_abs_diff(l8, l32);
  std::printf("fp8 checkpoint vs f32 of the same weights: max|d| = %.3g\n", d);
  EXPECT_LE(d, 1e-4f);
  auto want = io::read_f32(ref.get("prefill.logits"));
  std::printf("fp8 checkpoint vs reference (bf16 weights): max|d| = %.3g\n",
              max_abs_diff(l8, want));
}

// Decode steps (one token at a time from position 0: every product a GEMV, MLA's absorbed path
// on kv_b_proj's FP8 rows) on the FP8 checkpoint against the FP32 checkpoint of the same
// effective weights. Compute::F32 runs the exact FP8 GEMV: the QuantizeReloadAndCompare bound.
// Compute::BF16 runs gemv_fp8_bf16, which rounds x·scale to BF16 (relative 2⁻⁹ per product) and
// reads subnormal codes as zero: bound 2⁻⁷ of the largest |logit| of the step, checked on the
// steps up to the first one where a MoE layer picks other experts than the reference (a routing
// choice is discontinuous: from there the KV caches differ and the logits with them; on this
// data that happens at step 3, and at least the first step must be compared).
TEST(Fp8Checkpoint, DecodeStepsBothComputes) {
  const Fp8Pair pair("fp8_decode");
  const std::string &src = pair.src, &fp8_dir = pair.fp8_dir, &f32_dir = pair.f32_dir;
  const ModelConfig& c = pair.c;
  auto tokens =
      io::read_i32(io::TensorStore::open_file(src + "/reference.safetensors").get("tokens"));
  const int64_t steps = 12, V = c.vocab_size;
  // Logits of every step and, per step, the experts chosen in every MoE layer.
  auto decode = [&](const std::string& dir, cpu::Compute compute,
                    std::vector<std::vector<int32_t>>& experts) {
    LoadOptions lo;
    lo.compute = compute;
    auto m = Model::load(dir, lo);
    KVCache cache(m->config(), 1, steps, false);
    std::vector<float> logits(size_t(steps * V));
    std::vector<Routing> routes;
    ForwardOptions fo;
    fo.routes = &routes;
    for (int64_t p = 0; p < steps; ++p) {
      m->forward(&tokens[size_t(p)], 1, 1, p, cache, logits.data() + p * V, fo);
      experts.emplace_back();
      for (const Routing& r : routes) {
        std::vector<int32_t> e = r.indices;
        std::sort(e.begin(), e.end());
        experts.back().insert(experts.back().end(), e.begin(), e.end());
      }
    }
    return logits;
  };
  std::vector<std::vector<int32_t>> er, ee, eb;
  const auto ref = decode(f32_dir, cpu::Compute::F32, er);
  const auto exact = decode(fp8_dir, cpu::Compute::F32, ee);
  const auto bf16 = decode(fp8_dir, cpu::Compute::BF16, eb);
  EXPECT_LE(max_abs_diff(exact, ref), 1e-4f);
  EXPECT_EQ(ee, er);
  int64_t same = 0;  // steps whose routing (and all before) equals the reference's
  while (same < steps && eb[size_t(same)] == er[size_t(same)]) ++same;
  std::printf("fp8 decode, BF16 route: routing equals the reference's for the first %lld steps\n",
              (long long)same);
  ASSERT_GE(same, 1);
  for (int64_t p = 0; p < same; ++p) {
    float top = 0, d = 0;
    for (int64_t v = 0; v < V; ++v) {
      const size_t i = size_t(p * V + v);
      top = std::max(top, std::fabs(ref[i]));
      d = std::max(d, std::fabs(bf16[i] - ref[i]));
    }
    std::printf("step %lld: max|logit| %.3g, fp8 BF16-route max|d| %.3g\n", (long long)p, top, d);
    EXPECT_LE(d, std::ldexp(top, -7)) << "step " << p;
  }
  std::printf("fp8 decode, exact route vs f32 of the same weights: max|d| = %.3g\n",
              max_abs_diff(exact, ref));
}

// The prefill of the FP8 checkpoint under Compute::BF16 (linear_forward's FP8 GEMM from 9 rows:
// x rounded to BF16, codes exact, subnormal codes as zero, scales on the FP32 sums) against the
// FP32 checkpoint of the same effective weights, at every position before the first one where a
// MoE layer picks other experts than the reference (a position depends on the ones before it
// only). A prefill rounds x to BF16 in every product of every position, attention included, so
// its distance grows along the positions: measured 2026-12-07, max|d| 0.022–0.049 on logits of
// ~3 (the tiled route it replaced, code·scale rounded to BF16 then oneDNN: 0.035–0.048), over
// DecodeStepsBothComputes' 2⁻⁷ at most positions. The bound here, 2⁻⁵ of the position's largest
// |logit|, catches a wrong kernel (a lost scale or a misplaced lane is O(1)), not the rounding,
// which GemmFp8.* bounds per product.
TEST(Fp8Checkpoint, PrefillBf16Route) {
  const Fp8Pair pair("fp8_prefill");
  const std::string &src = pair.src, &fp8_dir = pair.fp8_dir, &f32_dir = pair.f32_dir;
  const ModelConfig& c = pair.c;
  auto tokens =
      io::read_i32(io::TensorStore::open_file(src + "/reference.safetensors").get("tokens"));
  const int64_t T = std::min<int64_t>(int64_t(tokens.size()), 32), V = c.vocab_size;
  ASSERT_GE(T, 9) << "the GEMM path needs more than 8 rows";
  // Logits of every position and, per position, the experts of every MoE layer.
  auto prefill = [&](const std::string& dir, cpu::Compute compute,
                     std::vector<std::vector<int32_t>>& experts) {
    LoadOptions lo;
    lo.compute = compute;
    auto m = Model::load(dir, lo);
    KVCache cache(m->config(), 1, T, false);
    std::vector<float> logits(size_t(T * V));
    std::vector<Routing> routes;
    ForwardOptions fo;
    fo.routes = &routes;
    m->forward(tokens.data(), 1, T, 0, cache, logits.data(), fo);
    experts.assign(size_t(T), {});
    for (const Routing& r : routes) {
      const size_t k = r.indices.size() / size_t(T);
      for (int64_t p = 0; p < T; ++p) {
        std::vector<int32_t> e(r.indices.begin() + p * k, r.indices.begin() + (p + 1) * k);
        std::sort(e.begin(), e.end());
        experts[size_t(p)].insert(experts[size_t(p)].end(), e.begin(), e.end());
      }
    }
    return logits;
  };
  std::vector<std::vector<int32_t>> er, eb;
  const auto ref = prefill(f32_dir, cpu::Compute::F32, er);
  const auto bf16 = prefill(fp8_dir, cpu::Compute::BF16, eb);
  int64_t same = 0;
  while (same < T && eb[size_t(same)] == er[size_t(same)]) ++same;
  std::printf(
      "fp8 prefill of %lld tokens, BF16 route: routing equals the reference's for the "
      "first %lld positions\n",
      (long long)T, (long long)same);
  ASSERT_GE(same, 1);
  for (int64_t p = 0; p < same; ++p) {
    float top = 0, d = 0;
    for (int64_t v = 0; v < V; ++v) {
      const size_t i = size_t(p * V + v);
      top = std::max(top, std::fabs(ref[i]));
      d = std::max(d, std::fabs(bf16[i] - ref[i]));
    }
    if (p < 3 || p + 1 == same)
      std::printf("position %lld: max|logit| %.3g, max|d| %.3g\n", (long long)p, top, d);
    EXPECT_LE(d, std::ldexp(top, -5)) << "position " << p;
  }
}

TEST(Fp8Checkpoint, ShardedExportLoads) {
  const std::string src = std::string(DSV3_TEST_DATA) + "/tiny-v2lite";
  ModelConfig c = load_config(src);
  auto store = io::TensorStore::open_dir(src);
  auto original = params_of(store);
  const std::string dir = tmp_dir("sharded");
  ExportOptions o;
  o.dtype = DType::F32;
  o.max_shard_bytes = 2 << 20;
  save_hf_checkpoint(dir, c, original, o);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  auto ref = io::TensorStore::open_file(src + "/reference.safetensors");
  auto tokens = io::read_i32(ref.get("tokens"));
  auto got = run_logits(dir, tokens, 2, 80);
  auto want = io::read_f32(ref.get("prefill.logits"));
  EXPECT_LE(max_abs_diff(got, want), 1e-4f);
  fs::remove_all(dir);
}

}  // namespace
