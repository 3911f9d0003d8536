// Hostile inputs to the dsv3 binary (issue 12): every out-of-range number, sampling setting,
// token id and model size is refused with a message that names the flag or key, before any
// allocation; `--threads` beyond the cores is capped with a warning; `inspect` opens a training
// checkpoint directory as its help says.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"
#include "io/file.hpp"
#include "train/checkpoint.hpp"
#include "train/test_trainer_util.hpp"

namespace fs = std::filesystem;
using dsv3::testing::CliResult;
using dsv3::testing::run_cli;
using nlohmann::json;

namespace {

const std::string kData = DSV3_TEST_DATA;
const std::string kModel = kData + "/tiny-v3";
const std::string kTokenizer = std::string(DSV3_SOURCE_DIR) + "/data/tokenizers/deepseek-v3";

std::string scratch(const std::string& tag) {
  const auto p =
      fs::temp_directory_path() / ("dsv3_harden_" + tag + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// Runs `args`, expects a non-zero status with `needle` in the output and no crash.
void expect_error(const std::string& args, const std::string& needle) {
  const CliResult r = run_cli(args);
  EXPECT_EQ(r.status, 1) << args << "\n" << r.out;  // 1: a clean error, not a signal
  EXPECT_NE(r.out.find(needle), std::string::npos) << args << ": expected '" << needle << "' in:\n"
                                                   << r.out;
  EXPECT_EQ(r.out.find("bad_alloc"), std::string::npos) << args << "\n" << r.out;
}

// tiny-v3's config.json with `key` set to `value`, written under `dir`.
std::string config_with(const std::string& dir, const std::string& key, const json& value) {
  json j = json::parse(dsv3::io::read_file(kModel + "/config.json"));
  j[key] = value;
  const std::string p = dir + "/config.json";
  dsv3::io::atomic_write(p, j.dump(2));
  return p;
}

TEST(CliHardening, InitRefusesBadConfigs) {
  const std::string dir = scratch("init");
  expect_error(
      "init --out " + dir + "/m --config " + config_with(dir, "max_position_embeddings", 1),
      "'max_position_embeddings' must be in [2,");
  expect_error("init --out " + dir + "/m --config " + config_with(dir, "num_hidden_layers", 2.9),
               "'num_hidden_layers' has the wrong type");
  expect_error("init --out " + dir + "/m --config " + config_with(dir, "vocab_size", 4294967297),
               "'vocab_size' must be in [1, 2147483647]");
  expect_error(
      "init --out " + dir + "/m --config " + config_with(dir, "hidden_size", 1000000000000),
      "'hidden_size' must be in [1, 2147483647]");
  // In range for the format, but its embedding alone is 10^12 parameters.
  expect_error("init --out " + dir + "/m --config " + config_with(dir, "hidden_size", 2000000000),
               "needs at least");
  EXPECT_FALSE(fs::exists(dir + "/m/model.safetensors"));
  fs::remove_all(dir);
}

TEST(CliHardening, HugeBatchesAreRefusedBeforeAllocating) {
  const std::string root = dsv3::train::testing::test_dir("harden-batch");
  dsv3::train::testing::write_corpus(root + "/corpus", 20);
  expect_error(
      "train --out " + root + "/run --data " + root + "/corpus --steps 1 --set batch=1000000000",
      "needs at least");
  EXPECT_FALSE(fs::exists(root + "/run/checkpoints"));
  expect_error("generate --model " + kModel + " --prompt-ids 1,2 -n 2 --batch 1000000000",
               "needs at least");
  fs::remove_all(root);
}

TEST(CliHardening, SamplingSettingsAreChecked) {
  const std::string gen = "generate --model " + kModel + " --prompt-ids 1,2 -n 2 ";
  for (const char* t : {"-1", "nan", "inf"})
    expect_error(gen + "--temperature " + t, "temperature must be a finite number >= 0");
  for (const char* p : {"1.5", "0", "-0.5", "nan"})
    expect_error(gen + "--top-p " + p, "top_p must be in (0, 1]");
  expect_error(gen + "--top-k -3", "--top-k -3: must be in [0,");
}

TEST(CliHardening, TokenIdsAreCheckedNotWrapped) {
  const std::string gen = "generate --model " + kModel + " -n 2 --prompt-ids ";
  expect_error(gen + "4294967297", "--prompt-ids: 4294967297: must be in [0, 2147483647]");
  expect_error(gen + "1,-1", "--prompt-ids: -1: must be in [0,");
  expect_error(gen + "1,2.5", "--prompt-ids: '2.5' is not an integer");
  if (!fs::exists(kTokenizer + "/tokenizer.json")) GTEST_SKIP() << "no " << kTokenizer;
  const std::string dir = scratch("decode");
  for (const char* bad : {"[[1.5]]", "[[4294967296]]", "[[10000000]]", "[[-1]]", "[[\"a\"]]"}) {
    dsv3::io::atomic_write(dir + "/ids.json", bad);
    expect_error("tokenize --tokenizer " + kTokenizer + " --decode --input " + dir + "/ids.json",
                 "is not a token id of this tokenizer");
  }
  dsv3::io::atomic_write(dir + "/ids.json", "[[19923, 2058]]");
  const CliResult ok =
      run_cli("tokenize --tokenizer " + kTokenizer + " --decode --input " + dir + "/ids.json");
  EXPECT_EQ(ok.status, 0) << ok.out;
  fs::remove_all(dir);
}

TEST(CliHardening, TokenizeWritesPlainModeToOutput) {
  if (!fs::exists(kTokenizer + "/tokenizer.json")) GTEST_SKIP() << "no " << kTokenizer;
  const std::string dir = scratch("tokout");
  const CliResult r =
      run_cli("tokenize --tokenizer " + kTokenizer + " --output " + dir + "/out.txt hello", false);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out.find("ids:"), std::string::npos) << "stdout: " << r.out;
  ASSERT_TRUE(fs::exists(dir + "/out.txt"));
  EXPECT_NE(dsv3::io::read_file(dir + "/out.txt").find("ids: ["), std::string::npos);
  fs::remove_all(dir);
}

TEST(CliHardening, NumbersOnTheCommandLineAreChecked) {
  const std::string dir = scratch("numbers");
  expect_error("train --out " + dir + "/run --steps -1", "--steps -1: must be in [0,");
  expect_error("train --out " + dir + "/run --steps 18446744073709551616",
               "--steps 18446744073709551616: out of range");
  EXPECT_FALSE(fs::exists(dir + "/run"));
  expect_error("export " + dir + " --out " + dir + "/x --step -5", "--step -5: must be in [0,");
  const CliResult r = run_cli("generate --model " + kModel + " --prompt-ids 1,2 -n -1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--max-new-tokens -1"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("--max-seq"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(CliHardening, ThreadsBeyondTheCoresAreCapped) {
  const CliResult r =
      run_cli("generate --model " + kModel + " --prompt-ids 1,2,3 -n 2 --no-stop --threads 1000");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("--threads 1000 exceeds the"), std::string::npos) << r.out;
}

TEST(CliHardening, InspectOpensATrainingCheckpointDir) {
  const std::string run = scratch("inspect");
  dsv3::train::CheckpointData d;
  d.step = 7;
  d.tensors["model.norm.weight"] = dsv3::train::Blob::f32({1, 2, 3});
  dsv3::train::save_checkpoint(run, d, 1);
  const CliResult r = run_cli("inspect " + dsv3::train::checkpoint_path(run, 7));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("model.norm.weight"), std::string::npos) << r.out;
  const CliResult help = run_cli("inspect --help");
  EXPECT_NE(help.out.find("training checkpoint directory"), std::string::npos) << help.out;
  fs::remove_all(run);
}

}  // namespace
