// Metrics file tests (train/metrics.hpp): every record kind round-trips through metrics.jsonl,
// missing values stay missing, a torn last line is tolerated (a bad middle line is an error
// naming the line), and resuming cuts the file back to the resumed step.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.hpp"
#include "io/file.hpp"
#include "train/metrics.hpp"
#include "train/temp_dir.hpp"

using namespace dsv3;
using namespace dsv3::train;
namespace fs = std::filesystem;

namespace {

struct TempDir : dsv3::train::testing::TempDir {
  TempDir() : dsv3::train::testing::TempDir("metrics") {}
  std::string file() const { return (path / "metrics.jsonl").string(); }
};

StepRecord step(int64_t s) {
  StepRecord r;
  r.step = s;
  r.loss = 5.0 - 0.01 * double(s);
  r.mtp_loss = r.loss + 0.3;
  r.lr = 3e-4;
  r.tokens_per_s = 12345;
  r.grad_norm = 1.25;
  r.time_s = double(s);
  r.max_vio = {0.5, 0.25};
  r.expert_load = {{1, 2, 3, 4}, {4, 3, 2, 1}};
  return r;
}

// Writes steps 1..n with an eval and a sample every 5 steps.
void write_run(const std::string& path, int64_t n) {
  MetricsWriter w(path);
  RunRecord run;
  run.name = "unit";
  run.moe_layers = {1, 2};
  run.n_routed_experts = 4;
  run.total_steps = n;
  w.write(run);
  for (int64_t s = 1; s <= n; ++s) {
    w.write(step(s));
    if (s % 5 == 0) {
      w.write(EvalRecord{s, 4.0, 4.5, std::exp(4.0)});
      w.write(SampleRecord{s, "Q: ", "A \"quoted\"\nanswer"});
    }
  }
}

}  // namespace

TEST(Metrics, RoundTrip) {
  TempDir t;
  write_run(t.file(), 10);
  MetricsLog log = read_metrics(t.file());
  EXPECT_FALSE(log.torn_tail);
  ASSERT_TRUE(log.has_run);
  EXPECT_EQ(log.run.name, "unit");
  EXPECT_EQ(log.run.moe_layers, (std::vector<int>{1, 2}));
  EXPECT_EQ(log.run.n_routed_experts, 4);
  ASSERT_EQ(log.steps.size(), 10u);
  const StepRecord& r = log.steps[6];
  StepRecord want = step(7);
  EXPECT_EQ(r.step, 7);
  EXPECT_DOUBLE_EQ(r.loss, want.loss);
  EXPECT_DOUBLE_EQ(r.mtp_loss, want.mtp_loss);
  EXPECT_DOUBLE_EQ(r.lr, 3e-4);
  EXPECT_DOUBLE_EQ(r.grad_norm, 1.25);
  EXPECT_TRUE(std::isnan(r.mfu));  // never set: stays missing
  EXPECT_EQ(r.max_vio, want.max_vio);
  EXPECT_EQ(r.expert_load, want.expert_load);
  ASSERT_EQ(log.evals.size(), 2u);
  EXPECT_EQ(log.evals[1].step, 10);
  EXPECT_DOUBLE_EQ(log.evals[1].val_mtp_loss, 4.5);
  ASSERT_EQ(log.samples.size(), 2u);
  EXPECT_EQ(log.samples[0].text, "A \"quoted\"\nanswer");
  // One record per line, each a JSON object with kind and step.
  std::string text = io::read_file(t.file());
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1 + 10 + 2 + 2);
  EXPECT_EQ(text.find("NaN"), std::string::npos);
  EXPECT_EQ(text.find("null"), std::string::npos);
}

TEST(Metrics, TornLastLineIsTolerated) {
  TempDir t;
  write_run(t.file(), 3);
  { std::ofstream(t.file(), std::ios::app) << "{\"kind\":\"step\",\"step\":4,\"lo"; }
  MetricsLog log = read_metrics(t.file());
  EXPECT_TRUE(log.torn_tail);
  EXPECT_EQ(log.steps.size(), 3u);
  // A bad line in the middle is an error naming the line.
  std::string text = io::read_file(t.file());
  std::ofstream(t.file()) << "{\"kind\":\"run\",\"step\":0}\nnot json\n" << text;
  try {
    read_metrics(t.file());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl:2"), std::string::npos) << e.what();
  }
}

TEST(Metrics, ResumeTruncatesLaterRecords) {
  TempDir t;
  write_run(t.file(), 12);
  { std::ofstream(t.file(), std::ios::app) << "{\"kind\":\"step\",\"st"; }  // killed mid-line
  {
    MetricsWriter w(t.file(), 7);  // resumed from the checkpoint of step 7
    MetricsLog cut = read_metrics(t.file());
    EXPECT_FALSE(cut.torn_tail);
    ASSERT_EQ(cut.steps.size(), 7u);
    EXPECT_EQ(cut.steps.back().step, 7);
    ASSERT_EQ(cut.evals.size(), 1u);
    EXPECT_EQ(cut.samples.size(), 1u);
    EXPECT_TRUE(cut.has_run);
    for (int64_t s = 8; s <= 9; ++s) w.write(step(s));
  }
  MetricsLog log = read_metrics(t.file());
  ASSERT_EQ(log.steps.size(), 9u);
  for (size_t i = 0; i < log.steps.size(); ++i) EXPECT_EQ(log.steps[i].step, int64_t(i) + 1);
  // Truncating at a step beyond the end keeps everything; at 0 keeps the run record only.
  truncate_metrics(t.file(), 1000);
  EXPECT_EQ(read_metrics(t.file()).steps.size(), 9u);
  truncate_metrics(t.file(), 0);
  MetricsLog zero = read_metrics(t.file());
  EXPECT_TRUE(zero.has_run);
  EXPECT_TRUE(zero.steps.empty());
}

TEST(Metrics, FreshWriterReplacesFile) {
  TempDir t;
  write_run(t.file(), 5);
  { MetricsWriter w(t.file()); }
  EXPECT_TRUE(read_metrics(t.file()).steps.empty());
  MetricsWriter w(t.file());
  EXPECT_THROW(w.write(nlohmann::json{{"step", 1}}), Error);  // no kind
}
