// `dsv3 train` as a person runs it (the binary in DSV3_BIN): bad flags, bad options and
// unreadable data fail with a clear message before any training work (no run dir is created);
// a run killed with SIGKILL mid-way resumes to the same losses as an uninterrupted run, also when
// killed again and again at random moments; a second writer on a run dir is refused; resume
// warnings are printed once.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cli_run.hpp"
#include "io/file.hpp"
#include "train/checkpoint.hpp"
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

namespace {

pid_t spawn_train(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(DSV3_BIN), const_cast<char*>("train")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(DSV3_BIN, argv.data());
    _exit(127);
  }
  return pid;
}

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) ++n;
  return n;
}

}  // namespace

// (b) A second `dsv3 train` on a run dir that a running one writes is refused, whether it
// resumes or starts over; the first is not disturbed.
TEST(TrainCli, SecondWriterIsRefused) {
  const std::string root = test_dir("cli-lock");
  TrainConfig c = tiny_config(root);
  c.steps = 100000;  // runs until killed
  c.sample_tokens = 0;
  const std::string opts = write_options(root, c), dir = root + "/run";
  const pid_t pid = spawn_train({"--quiet", "--options", opts, "--out", dir});
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(50);
  size_t seen = 0;
  while (seen < 2 && std::chrono::steady_clock::now() < deadline) {
    try {
      seen = read_metrics(dir + "/metrics.jsonl").steps.size();
    } catch (const std::exception&) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // (--steps 3: without the lock, each would train beside the first instead of hanging the test.)
  dsv3::testing::CliResult r1 = run_cli("train --quiet --steps 3 --resume " + dir);
  dsv3::testing::CliResult r2 =
      run_cli("train --quiet --steps 3 --options " + opts + " --out " + dir + " --overwrite");
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st)) << "the first writer ended on its own";
  ASSERT_GE(seen, 2u) << "the first writer logged no steps";
  EXPECT_NE(r1.status, 0) << r1.out;
  EXPECT_NE(r1.out.find("in use by another dsv3 train"), std::string::npos) << r1.out;
  EXPECT_NE(r2.status, 0) << r2.out;
  EXPECT_NE(r2.out.find("in use by another dsv3 train"), std::string::npos) << r2.out;
}

// (d) Resuming past a torn checkpoint prints the warning about it once.
TEST(TrainCli, ResumeWarnsOnce) {
  const std::string root = test_dir("cli-warn");
  TrainConfig c = tiny_config(root);
  c.steps = 6;
  c.checkpoint_every = 2;
  c.sample_tokens = 0;
  const std::string opts = write_options(root, c), dir = root + "/run";
  ASSERT_EQ(run_cli("train --quiet --options " + opts + " --out " + dir).status, 0);
  const std::string torn = dir + "/checkpoints/step-6/tensors.safetensors";
  fs::resize_file(torn, fs::file_size(torn) / 2);
  dsv3::testing::CliResult r = run_cli("train --quiet --resume " + dir);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(count(r.out, "skipping corrupt or partial checkpoint"), 1u) << r.out;
}

// (f) Crash consistency: `dsv3 train` killed with SIGKILL at several random moments of one run
// (seeded delays spread over a whole run: setup, tokenizer, steps, checkpoint writes, export),
// each time continued with --resume (or started again when it was killed before recording its
// options), ends with the uninterrupted run's losses, step for step, and its final model.
TEST(TrainCli, CrashConsistencyAtRandomMoments) {
  const uint64_t seed = 20261207;
  std::printf("crash-consistency seed %llu\n", static_cast<unsigned long long>(seed));
  const std::string root = test_dir("cli-crash");
  TrainConfig c = tiny_config(root);
  c.steps = 30;
  c.checkpoint_every = 4;
  c.eval_every = 16;
  c.sample_tokens = 0;
  const std::string opts = write_options(root, c), dir = root + "/killed";
  dsv3::testing::CliResult full =
      run_cli("train --quiet --options " + opts + " --out " + root + "/full");
  ASSERT_EQ(full.status, 0) << full.out;
  const auto want = read_metrics(root + "/full/metrics.jsonl").steps;
  ASSERT_EQ(want.size(), 30u);

  auto expect_prefix = [&](const std::string& when) {
    if (!fs::exists(dir + "/metrics.jsonl")) return;
    const auto got = read_metrics(dir + "/metrics.jsonl").steps;
    ASSERT_LE(got.size(), want.size()) << when;
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_EQ(got[i].loss, want[i].loss) << when << ", step " << got[i].step;
  };
  auto next_args = [&]() -> std::vector<std::string> {
    if (fs::exists(dir + "/run.json")) return {"--quiet", "--resume", dir};
    return {"--quiet", "--options", opts, "--out", dir};
  };
  auto steps_logged = [&]() -> size_t {
    try {
      return read_metrics(dir + "/metrics.jsonl").steps.size();
    } catch (const std::exception&) {
      return 0;
    }
  };
  // Even attempts die 0-400 ms after they start (process start, run record, tokenizer, data,
  // model init, first steps); odd ones once a random step of the next third of the rest is
  // logged, plus 0-40 ms (inside steps, evaluations and checkpoint writes), so the run gets on
  // and every phase is hit whatever the machine's speed.
  dsv3::Rng rng(seed);
  bool finished = false;
  int kills = 0;
  for (int k = 0; k < 8 && !finished; ++k) {
    const auto args = next_args();
    const size_t done = steps_logged();
    const size_t rest = want.size() - std::min(done, want.size());
    const size_t target = done + 1 + rng.below(std::max<uint64_t>(1, rest / 3));
    const int delay_ms = int(rng.below(401));
    const int extra_ms = int(rng.below(41));
    const pid_t pid = spawn_train(args);
    ASSERT_GT(pid, 0);
    int st = 0;
    pid_t reaped = 0;
    if (k % 2 == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    } else {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (steps_logged() < target && std::chrono::steady_clock::now() < deadline &&
             (reaped = waitpid(pid, &st, WNOHANG)) == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      if (reaped == 0) std::this_thread::sleep_for(std::chrono::milliseconds(extra_ms));
    }
    if (reaped == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
    }
    finished = WIFEXITED(st);
    if (finished) {
      ASSERT_EQ(WEXITSTATUS(st), 0) << "attempt " << k << " failed on its own";
    }
    kills += WIFSIGNALED(st);
    const std::string when =
        k % 2 == 0 ? std::to_string(delay_ms) + " ms"
                   : "step " + std::to_string(target) + " + " + std::to_string(extra_ms) + " ms";
    std::printf("attempt %d (%s): %s %s: %zu steps logged, %zu checkpoint(s)\n", k,
                args[1] == "--resume" ? "resume" : "start",
                finished ? "finished before" : "killed at", when.c_str(), steps_logged(),
                dsv3::train::list_checkpoints(dir).size());
    expect_prefix("after attempt " + std::to_string(k));
  }
  if (!finished) {
    const auto args = next_args();
    std::string cmd = "train";
    for (const auto& a : args) cmd += " " + a;
    dsv3::testing::CliResult r = run_cli(cmd);
    ASSERT_EQ(r.status, 0) << r.out;
  }
  EXPECT_GE(kills, 2) << "too few attempts were killed to mean much";
  const auto got = read_metrics(dir + "/metrics.jsonl").steps;
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].step, want[i].step);
    EXPECT_EQ(got[i].loss, want[i].loss) << "step " << want[i].step;
  }
  EXPECT_EQ(dsv3::io::read_file(root + "/full/final/model.safetensors"),
            dsv3::io::read_file(dir + "/final/model.safetensors"));
}
