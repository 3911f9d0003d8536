// The parameter arena (train/params.hpp): layout from the parameter table, weight-decay mask,
// random initialization, save/load round trips in F32, BF16 and FP8 (block-scaled) HF layout;
// and `dsv3 grads` end to end against the reference gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "io/safetensors.hpp"
#include "train/params.hpp"

using namespace dsv3;
using namespace dsv3::train;

namespace {

std::string tmp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("dsv3_test_params_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

TEST(ParamStore, LayoutAndDecayMask) {
  ParamStore p = ParamStore::load(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  int64_t end = 0;
  for (const auto& e : p.entries()) {
    EXPECT_EQ(e.offset % 16, 0) << e.name;
    EXPECT_GE(e.offset, end) << e.name;
    end = e.offset + e.numel;
    const bool norm = e.role == model::ParamRole::Norm;
    const bool bias = e.role == model::ParamRole::RouterBias;
    EXPECT_EQ(e.weight_decay, !norm && !bias) << e.name;
    EXPECT_EQ(e.trainable, !bias) << e.name;
  }
  EXPECT_LE(end, p.size());
  EXPECT_EQ(p.entries().size(), 207u);
  // A BF16 weight and the F32 bias read back exactly.
  auto st = io::TensorStore::open_dir(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  for (const char* n : {"model.layers.1.self_attn.q_b_proj.weight",
                        "model.layers.2.mlp.gate.e_score_correction_bias"}) {
    auto want = io::read_f32(st.get(n));
    const float* got = p.param(n);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << n;
  }
}

TEST(ParamStore, InitSaveLoadRoundTrips) {
  auto c = model::load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  for (InitScheme scheme : {InitScheme::FanIn, InitScheme::InitializerRange}) {
    ParamStore p(c);
    p.init_random(42, scheme);
    std::printf("[params] init seed 42 scheme %d\n", int(scheme));
    for (const auto& e : p.entries()) {
      const float* v = p.params() + e.offset;
      if (e.role == model::ParamRole::Norm) {
        EXPECT_EQ(v[0], 1.0f) << e.name;
      }
      if (e.role == model::ParamRole::RouterBias) {
        EXPECT_EQ(v[0], 0.0f) << e.name;
      }
      if (e.role == model::ParamRole::Linear) {
        double ss = 0;
        for (int64_t i = 0; i < e.numel; ++i) ss += double(v[i]) * v[i];
        const double std = std::sqrt(ss / double(e.numel));
        const double want = scheme == InitScheme::InitializerRange
                                ? c.initializer_range
                                : (e.residual_out ? 0.3 : 1.0) / std::sqrt(double(e.shape[1]));
        EXPECT_NEAR(std, want, 0.1 * want) << e.name;
      }
    }
    for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3}) {
      const std::string dir = tmp_dir(std::string(dtype_name(dt)));
      p.save(dir, dt);
      ParamStore q = ParamStore::load(dir);
      ASSERT_EQ(q.size(), p.size());
      double worst = 0;
      for (const auto& e : p.entries()) {
        for (int64_t i = 0; i < e.numel; ++i) {
          const double a = p.params()[e.offset + i], b = q.params()[e.offset + i];
          const double tol = dt == DType::F32 || e.role == model::ParamRole::RouterBias ? 0
                             : dt == DType::BF16 || !e.fp8 ? std::ldexp(std::fabs(a), -8)
                                                           : 0.07 * std::fabs(a) + 1e-3;
          ASSERT_LE(std::fabs(a - b), tol) << e.name << " " << dtype_name(dt);
          worst = std::max(worst, std::fabs(a - b));
        }
      }
      std::printf("[params] %s round trip: max|diff| %.3g\n", std::string(dtype_name(dt)).c_str(),
                  worst);
      std::filesystem::remove_all(dir);
    }
  }
}

TEST(GradsCommand, WritesReferenceGradients) {
  const std::string bin = DSV3_BIN;
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << bin << " not built";
  const std::string data = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  auto ref = io::TensorStore::open_file(data + "/reference.safetensors");
  const std::string dir = tmp_dir("grads");
  std::filesystem::create_directories(dir);
  {
    io::SafetensorsWriter w;
    auto tok = io::read_i32(ref.get("tokens"));
    w.add("tokens", DType::I32, ref.get("tokens").shape, tok.data());
    w.write(dir + "/tokens.safetensors");
  }
  const std::string cmd = bin + " grads --model " + data + " --tokens " + dir +
                          "/tokens.safetensors --out " + dir + "/g.safetensors --mtp-lambda 0.3";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto got = io::TensorStore::open_file(dir + "/g.safetensors");
  EXPECT_NEAR(io::read_f32(got.get("loss"))[0], io::read_f32(ref.get("train.loss_total"))[0], 1e-5);
  int n = 0;
  for (const auto& name : got.names()) {
    if (name == "loss") continue;
    auto g = io::read_f32(got.get(name));
    auto want = io::read_f32(ref.get("grad_total." + name.substr(5)));
    ASSERT_EQ(g.size(), want.size()) << name;
    double err = 0, mx = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      err = std::max(err, double(std::fabs(g[i] - want[i])));
      mx = std::max(mx, double(std::fabs(want[i])));
    }
    EXPECT_LE(err, 1e-4 * mx) << name;
    ++n;
  }
  EXPECT_EQ(n, 207);
  std::filesystem::remove_all(dir);
}

}  // namespace
