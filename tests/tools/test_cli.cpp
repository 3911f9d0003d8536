// End-to-end checks of the dsv3 binary: init -> logits -> compare with the in-process model;
// generate runs; bad flags and bad files fail with a clear message and a non-zero status.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli_run.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

using Result = dsv3::testing::CliResult;

Result run(const std::string& args) {
  return dsv3::testing::run_cli(args);
}

std::string tmp(const std::string& tag) {
  auto p = fs::temp_directory_path() / ("dsv3_cli_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p.string();
}

TEST(Cli, LogitsCommandMatchesReference) {
  const std::string data = DSV3_TEST_DATA;
  const std::string out = tmp("logits") + ".safetensors";
  // The reference file itself holds an I32 `tokens` [B, T].
  auto r = run("logits --model " + data + "/tiny-v3 --tokens " + data +
               "/tiny-v3/reference.safetensors --out " + out + " --mtp");
  ASSERT_EQ(r.status, 0) << r.out;
  auto got = io::TensorStore::open_file(out);
  auto ref = io::TensorStore::open_file(data + "/tiny-v3/reference.safetensors");
  for (auto [mine, theirs] :
       {std::pair{"logits", "prefill.logits"}, std::pair{"mtp_logits", "mtp.logits"}}) {
    auto a = io::read_f32(got.get(mine));
    auto b = io::read_f32(ref.get(theirs));
    ASSERT_EQ(a.size(), b.size());
    float d = 0;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
    EXPECT_LE(d, 1e-4f) << mine;
  }
  fs::remove(out);
}

TEST(Cli, InitThenGenerate) {
  const std::string dir = tmp("init");
  auto r = run("init --config " + std::string(DSV3_TEST_DATA) + "/tiny-v2lite/config.json --out " +
               dir + " --seed 3 --dtype bf16");
  ASSERT_EQ(r.status, 0) << r.out;
  r = run("generate --model " + dir + " --prompt-ids 5,6,7 -n 8 --no-stop --seed 1");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("decode:"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(Cli, BadInputsFailClearly) {
  auto r = run("logits --model /nonexistent --tokens x --out y");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("cannot open x"), std::string::npos) << r.out;
  r = run("logits --model /nonexistent --tokens " + std::string(DSV3_TEST_DATA) +
          "/tiny-v3/reference.safetensors --out y");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("/nonexistent"), std::string::npos) << r.out;
  r = run("init --config " + std::string(DSV3_TEST_DATA) +
          "/tiny-v3/config.json --out /tmp/x --dtype int4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--dtype"), std::string::npos) << r.out;
  r = run("generate --model " + std::string(DSV3_TEST_DATA) + "/tiny-v3 --prompt-ids 1,x");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("not an integer"), std::string::npos) << r.out;
  r = run("frobnicate");
  EXPECT_NE(r.status, 0);
}

}  // namespace
