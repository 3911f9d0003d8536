// `dsv3 inspect` end to end: the listing and totals of the tiny-v3 checkpoint, --stats on a
// hand-made FP8 block-scaled file (dequantized values known exactly), and clear failures on bad
// paths. Runs the built binary (DSV3_BIN); skipped when it has not been built.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_run.hpp"
#include "core/quant.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

using Result = dsv3::testing::CliResult;

Result run_dsv3(const std::string& args) {
  return dsv3::testing::run_cli(args);
}

// The output line that starts with `name` followed by a space.
std::string line_of(const std::string& out, const std::string& name) {
  size_t at = 0;
  while ((at = out.find(name + " ", at)) != std::string::npos) {
    if (at == 0 || out[at - 1] == '\n') return out.substr(at, out.find('\n', at) - at);
    ++at;
  }
  return "";
}

class InspectCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(DSV3_BIN)) GTEST_SKIP() << DSV3_BIN << " not built";
  }
};

}  // namespace

TEST_F(InspectCli, ListsTinyV3) {
  Result r = run_dsv3("inspect " + std::string(DSV3_TEST_DATA) + "/tiny-v3");
  ASSERT_EQ(r.status, 0) << r.out;
  std::string l = line_of(r.out, "lm_head.weight");
  EXPECT_NE(l.find("BF16"), std::string::npos) << l;
  EXPECT_NE(l.find("[512, 256]"), std::string::npos) << l;
  EXPECT_NE(l.find("262144"), std::string::npos) << l;
  l = line_of(r.out, "model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_NE(l.find("F32"), std::string::npos) << l;
  EXPECT_NE(l.find("[16]"), std::string::npos) << l;
  EXPECT_NE(l.find(" 64"), std::string::npos) << l;
  // 204 BF16 tensors + 3 F32 biases of 64 bytes.
  EXPECT_NE(r.out.find("207 tensors, 7797696 bytes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("F32          3 tensors            192 bytes"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("min "), std::string::npos);  // no stats unless asked
}

TEST_F(InspectCli, StatsDequantizeFp8Weights) {
  const fs::path dir = fs::temp_directory_path() / ("dsv3_inspect_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // A 130x3 weight (two row blocks, the second partial); the expected stats are those of the
  // dequantized values, computed here through core/quant.
  const int64_t rows = 130, cols = 3;
  std::vector<float> w(size_t(rows * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(int(i) - 195) * 0.25f;
  std::vector<uint8_t> codes(w.size());
  std::vector<float> scale(2);
  fp8_block_quantize(codes.data(), scale.data(), w.data(), rows, cols);
  std::vector<float> deq(w.size());
  fp8_block_dequantize(deq.data(), codes.data(), scale.data(), rows, cols);
  float lo = deq[0], hi = deq[0];
  for (float x : deq) lo = std::min(lo, x), hi = std::max(hi, x);
  io::SafetensorsWriter wr;
  wr.add("layer.weight", DType::F8_E4M3, {rows, cols}, codes.data());
  wr.add_f32("layer.weight_scale_inv", {2, 1}, scale.data());
  const int32_t ids[2] = {1, 2};
  wr.add("ids", DType::I32, {2}, ids);
  const std::string file = (dir / "fp8.safetensors").string();
  wr.write(file);

  Result r = run_dsv3("inspect --stats " + file);
  ASSERT_EQ(r.status, 0) << r.out;
  std::string l = line_of(r.out, "layer.weight");
  EXPECT_NE(l.find("(dequantized)"), std::string::npos) << l;
  EXPECT_NE(l.find(fmt::format("min {:.6g} max {:.6g}", lo, hi)), std::string::npos)
      << l << " want min " << lo << " max " << hi;
  EXPECT_EQ(line_of(r.out, "ids").find("min"), std::string::npos);  // integers get no stats

  // A scale of the wrong shape is an error naming both tensors.
  io::SafetensorsWriter bad;
  bad.add("layer.weight", DType::F8_E4M3, {rows, cols}, codes.data());
  bad.add_f32("layer.weight_scale_inv", {1, 2}, scale.data());
  bad.write(file);
  r = run_dsv3("inspect --stats " + file);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("'layer.weight_scale_inv' has dtype F32 and shape [1, 2], expected F32 "
                       "[2, 1]"),
            std::string::npos)
      << r.out;
  fs::remove_all(dir);
}

TEST_F(InspectCli, BadPathsFailClearly) {
  Result r = run_dsv3("inspect /nonexistent/x.safetensors");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("dsv3: error: /nonexistent/x.safetensors: no such file"), std::string::npos)
      << r.out;
  r = run_dsv3("inspect " + std::string(DSV3_TEST_DATA) + "/tiny-v3/config.json");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("config.json: header length"), std::string::npos) << r.out;
  r = run_dsv3("inspect " + std::string(DSV3_TEST_DATA));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("neither model.safetensors nor model.safetensors.index.json"),
            std::string::npos)
      << r.out;
  r = run_dsv3("inspect");
  EXPECT_NE(r.status, 0);
}
