// `dsv3 train` as a person runs it (the binary in DSV3_BIN): bad flags, bad options and
// unreadable data fail with a clear message before any training work (no run dir is created);
// and a run killed with SIGKILL mid-way resumes to the same losses as an uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_run.hpp"
#include "io/file.hpp"
#include "train/metrics.hpp"
#include "train/test_trainer_util.hpp"

namespace fs = std::filesystem;
using namespace dsv3::train;
using namespace dsv3::train::testing;

namespace {

using dsv3::testing::run_cli;

void expect_refused(const std::string& args, const std::string& run_dir,
                    const std::string& message) {
  fs::remove_all(run_dir);
  dsv3::testing::CliResult r = run_cli("train --out " + run_dir + " " + args);
  EXPECT_NE(r.status, 0) << args;
  EXPECT_NE(r.out.find(message), std::string::npos)
      << args << ": expected '" << message << "' in:\n"
      << r.out;
  EXPECT_FALSE(fs::exists(run_dir)) << args << ": the run dir was created";
}

std::string write_options(const std::string& root, const TrainConfig& c) {
  const std::string p = root + "/options.json";
  dsv3::io::atomic_write(p, c.to_json().dump(2));
  return p;
}

}  // namespace

TEST(TrainCli, BadFlagsAndDataFailBeforeTraining) {
  const std::string root = test_dir("cli-bad");
  const std::string out = root + "/run";
  write_corpus(root + "/corpus", 20);
  const std::string data = "--data " + root + "/corpus";
  expect_refused(data + " --bogus-flag", out, "--bogus-flag");
  expect_refused(data + " --steps abc", out, "--steps");
  expect_refused(data + " --steps 0", out, "'steps' must be >= 1");
  expect_refused(data + " --set hidden_sizee=128", out, "hidden_sizee");
  expect_refused(data + " --set lr=fast", out, "'lr'");
  expect_refused(data + " --set lr_schedule=linear", out, "lr_schedule");
  expect_refused(data + " --set num_experts_per_tok=16", out, "num_experts_per_tok");
  expect_refused("--data " + root + "/missing.txt", out, "missing.txt");
  {
    std::ofstream f(root + "/bad.txt", std::ios::binary);
    f << "valid text\n\xff\xfe broken\n";
  }
  expect_refused("--data " + root + "/bad.txt", out, "bad.txt");
  expect_refused(data + " --tokenizer " + root + "/no-tokenizer", out, "tokenizer");
  expect_refused(data + " --options " + root + "/missing-options.json", out,
                 "missing-options.json");
  dsv3::testing::CliResult r = run_cli("train --resume " + root + "/nothing-here");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("nothing-here"), std::string::npos) << r.out;
}

// kill -9 of `dsv3 train` in the middle of the run (possibly inside a checkpoint write), then
// `dsv3 train --resume`: the losses equal those of an uninterrupted run, step for step.
TEST(TrainCli, KilledRunResumesExactly) {
  const std::string root = test_dir("cli-kill");
  TrainConfig c = tiny_config(root);
  c.steps = 40;
  c.checkpoint_every = 3;
  c.sample_tokens = 0;
  const std::string opts = write_options(root, c);

  dsv3::testing::CliResult full =
      run_cli("train --quiet --options " + opts + " --out " + root + "/full");
  ASSERT_EQ(full.status, 0) << full.out;
  // The final model generates text through its own tokenizer: stdout is the prompt and the
  // decoded continuation, not token ids.
  dsv3::testing::CliResult gen = run_cli(
      "generate --model " + root + "/full/final --prompt 'The' -n 12 --seed 3 --no-stop", false);
  ASSERT_EQ(gen.status, 0) << gen.out;
  EXPECT_EQ(gen.out.rfind("The", 0), 0u) << gen.out;
  EXPECT_GT(gen.out.size(), 4u) << gen.out;

  const std::string killed = root + "/killed";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(DSV3_BIN, DSV3_BIN, "train", "--quiet", "--options", opts.c_str(), "--out",
          killed.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Kill once a few steps are logged.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(50);
  size_t seen = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      seen = read_metrics(killed + "/metrics.jsonl").steps.size();
    } catch (const std::exception&) {
    }
    if (seen >= 20) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st)) << "the run ended before it was killed (" << seen << " steps)";

  dsv3::testing::CliResult resumed = run_cli("train --quiet --resume " + killed);
  ASSERT_EQ(resumed.status, 0) << resumed.out;
  const auto a = read_metrics(root + "/full/metrics.jsonl").steps;
  const auto b = read_metrics(killed + "/metrics.jsonl").steps;
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;
  }
  EXPECT_EQ(dsv3::io::read_file(root + "/full/final/model.safetensors"),
            dsv3::io::read_file(killed + "/final/model.safetensors"));
}
