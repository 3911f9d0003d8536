// Report and progress-line tests (train/report.hpp, train/progress.hpp): the SVG charts and the
// expert-load heatmap have the expected structure and colours, the HTML report is
// self-contained and holds every section (and both runs when compared), `dsv3 report` writes
// the files, and the progress line reads as documented.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "train/metrics.hpp"
#include "train/progress.hpp"
#include "train/report.hpp"
#include "train/temp_dir.hpp"

using namespace dsv3;
using namespace dsv3::train;
namespace fs = std::filesystem;

namespace {

struct TempDir : dsv3::train::testing::TempDir {
  TempDir() : dsv3::train::testing::TempDir("report") {}
};

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// A synthetic run: loss falls; expert load skewed toward expert 0 unless balanced.
void write_fake_run(const fs::path& dir, const std::string& name, bool balanced, uint64_t seed) {
  fs::create_directories(dir);
  Rng rng(seed);
  MetricsWriter w((dir / "metrics.jsonl").string());
  RunRecord run;
  run.name = name;
  run.moe_layers = {1, 2, 3};
  run.n_routed_experts = 8;
  run.total_steps = 60;
  w.write(run);
  for (int64_t s = 1; s <= 60; ++s) {
    StepRecord r;
    r.step = s;
    r.loss = 6.0 * std::exp(-double(s) / 40) + 0.1 * rng.uniform();
    r.mtp_loss = r.loss + 0.4;
    r.lr = 3e-4 * std::min(1.0, double(s) / 10);
    r.tokens_per_s = 12000 + 100 * rng.uniform();
    r.mfu = 0.3;
    for (int l = 0; l < 3; ++l) {
      std::vector<double> load(8);
      for (int e = 0; e < 8; ++e)
        load[size_t(e)] = 100 + (balanced ? 10 : 400 * (e == 0)) * rng.uniform();
      double mean = 0, mx = 0;
      for (double v : load) mean += v / 8, mx = std::max(mx, v);
      r.max_vio.push_back((mx - mean) / mean);
      r.expert_load.push_back(load);
    }
    w.write(r);
    if (s % 20 == 0) {
      w.write(EvalRecord{s, r.loss + 0.1, r.mtp_loss + 0.1, std::exp(r.loss + 0.1)});
      w.write(SampleRecord{s, "Once <upon>", " a time & more"});
    }
  }
}

}  // namespace

TEST(Report, LineChartStructure) {
  Series a{"train <main>", {1, 2, 3, 4}, {4, 3, NAN, 1}, "", false, false};
  Series b{"val", {2, 4}, {3.5, 1.5}, "#123456", true, true};
  std::string svg = svg_line_chart({"loss & such", "step", "loss", 400, 200}, {a, b});
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_EQ(count(svg, "</svg>"), 1u);
  EXPECT_NE(svg.find("loss &amp; such"), std::string::npos);
  EXPECT_NE(svg.find("train &lt;main&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("<main>"), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"series\""), 2u);
  // The NaN breaks the line into two runs (two M commands); the markers are circles.
  size_t p = svg.find("<path class=\"series\" d=\"");
  ASSERT_NE(p, std::string::npos);
  std::string d = svg.substr(p, svg.find('"', p + 25) - p);
  EXPECT_EQ(count(d, "M"), 2u);
  EXPECT_EQ(count(svg, "<circle"), 2u);
  EXPECT_NE(svg.find("stroke-dasharray"), std::string::npos);
  EXPECT_NE(svg.find("#123456"), std::string::npos);
  std::string empty = svg_line_chart({"nothing", "x", "y"}, {});
  EXPECT_NE(empty.find("no data"), std::string::npos);
  EXPECT_EQ(count(empty, "</svg>"), 1u);
}

TEST(Report, HeatmapColoursFollowLoadShare) {
  std::vector<int64_t> steps{1, 2};
  // Even load: every cell white. All load on expert 0: it is red, the rest blue.
  std::string even = svg_expert_heatmap("even", steps, {{5, 5, 5, 5}, {1, 1, 1, 1}});
  std::string g = even.substr(even.find("<g class=\"heatmap\""));
  g = g.substr(0, g.find("</g>"));
  EXPECT_EQ(count(g, "<rect"), 8u);
  EXPECT_EQ(count(g, "fill=\"#ffffff\""), 8u);
  std::string skew = svg_expert_heatmap("skew", steps, {{1, 0, 0, 0}, {1, 0, 0, 0}});
  g = skew.substr(skew.find("<g class=\"heatmap\""));
  g = g.substr(0, g.find("</g>"));
  EXPECT_EQ(count(g, "fill=\"#ff0000\""), 2u);
  EXPECT_EQ(count(g, "fill=\"#0000ff\""), 6u);
  // Many steps are averaged down to at most 100 columns.
  std::vector<int64_t> many(1000);
  std::vector<std::vector<double>> load(1000, std::vector<double>{1, 2, 3});
  for (int i = 0; i < 1000; ++i) many[size_t(i)] = i;
  std::string big = svg_expert_heatmap("big", many, load);
  g = big.substr(big.find("<g class=\"heatmap\""));
  g = g.substr(0, g.find("</g>"));
  EXPECT_EQ(count(g, "<rect"), 300u);
  EXPECT_NE(svg_expert_heatmap("none", {}, {}).find("no expert-load data"), std::string::npos);
}

TEST(Report, HtmlReportWithBaseline) {
  const uint64_t seed = 17;
  std::printf("fake run seed %llu\n", (unsigned long long)seed);
  TempDir t;
  fs::path run = t.path / "run";
  write_fake_run(run, "balanced", true, seed);
  ReportPaths alone = write_report(run.string());
  EXPECT_TRUE(alone.compared_with.empty());
  std::string html1 = io::read_file(alone.html);

  write_fake_run(run / "baseline", "no balancing", false, seed + 1);
  ReportPaths out = write_report(run.string());
  EXPECT_EQ(out.html, (run / "report.html").string());
  EXPECT_EQ(out.compared_with,
            std::vector<std::string>{(run / "baseline" / "metrics.jsonl").string()});
  std::string html = io::read_file(out.html);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  // Self-contained: no scripts, no external stylesheets or images.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(count(html, "http"), count(html, "http://www.w3.org/2000/svg"));
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));
  // loss + lr + tokens/s + one MaxVio chart per run + one heatmap per layer per run.
  EXPECT_EQ(count(html, "<svg"), 3u + 2u + 3u * 2u);
  EXPECT_EQ(count(html1, "<svg"), 3u + 1u + 3u);
  for (const char* s :
       {"Loss", "learning rate", "throughput", "MaxVio", "Expert load", "layer 1", "layer 3",
        "balanced", "no balancing", "Samples at step 60", "Once &lt;upon&gt;", "validation MTP"})
    EXPECT_NE(html.find(s), std::string::npos) << s;
  EXPECT_GT(count(html, "<rect"), 3u * 2u * 8u * 60u);

  std::string svg = io::read_file(out.loss_svg);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_EQ(count(svg, "<svg"), 1u);
  EXPECT_NE(svg.find("balanced: train"), std::string::npos);
  EXPECT_NE(svg.find("no balancing: train"), std::string::npos);

  // --compare names a second run explicitly; a dir without metrics is an error.
  ReportPaths cmp = write_report((run / "baseline").string(), {run.string()});
  EXPECT_EQ(cmp.compared_with, std::vector<std::string>{(run / "metrics.jsonl").string()});
  EXPECT_THROW(write_report(t.path.string()), Error);
  EXPECT_THROW(write_report(run.string(), {t.path.string()}), Error);
  EXPECT_THROW(write_report(run.string(), {(run / "baseline").string(), t.path.string()}), Error);
}

namespace {
// A run whose training loss is `train` at every step and whose one evaluation gives `val`.
void write_flat_run(const fs::path& dir, const std::string& name, double train, double val) {
  fs::create_directories(dir);
  MetricsWriter w((dir / "metrics.jsonl").string());
  RunRecord run;
  run.name = name;
  run.total_steps = 20;
  w.write(run);
  for (int64_t s = 1; s <= 20; ++s) {
    StepRecord r;
    r.step = s;
    r.loss = train;
    r.lr = 1e-3;
    r.tokens_per_s = 1000;
    w.write(r);
  }
  w.write(EvalRecord{20, val, kNoValue, std::exp(val)});
}
}  // namespace

// An ablation's report: one run beside two others, its final losses relative to each of them
// (values chosen by hand: 2.0 vs 2.5 is -20%, 2.0 vs 1.6 and 3.0 vs 2.4 are +25%).
TEST(Report, SeveralComparedRunsWithRelativeLoss) {
  TempDir t;
  write_flat_run(t.path / "fp8", "fp8", 2.0, 3.0);
  write_flat_run(t.path / "bf16", "bf16", 2.5, 3.0);
  write_flat_run(t.path / "fp32", "fp32", 1.6, 2.4);
  write_flat_run(t.path / "copy", "bf16", 2.5, 3.0);  // a label already taken
  ReportPaths out = write_report(
      (t.path / "fp8").string(),
      {(t.path / "bf16").string(), (t.path / "fp32").string(), (t.path / "copy").string()});
  ASSERT_EQ(out.compared_with.size(), 3u);
  std::string html = io::read_file(out.html);
  EXPECT_NE(html.find("fp8 vs this: train loss"), std::string::npos);
  EXPECT_NE(html.find("<td>bf16</td><td>20</td><td>2.500</td><td>3.000</td>"), std::string::npos);
  EXPECT_NE(html.find("<td>-20.00%</td><td>+0.00%</td>"), std::string::npos);
  EXPECT_NE(html.find("<td>+25.00%</td><td>+25.00%</td>"), std::string::npos);
  EXPECT_NE(html.find("bf16 (compared)"), std::string::npos);
  std::string svg = io::read_file(out.loss_svg);
  for (const char* l : {"fp8: train", "bf16: train", "fp32: train", "bf16 (compared): train"})
    EXPECT_NE(svg.find(l), std::string::npos) << l;
}

TEST(Report, CommandWritesFiles) {
  if (!fs::exists(DSV3_BIN)) GTEST_SKIP() << DSV3_BIN << " not built";
  TempDir t;
  write_fake_run(t.path, "cli", true, 3);
  std::string cmd = std::string(DSV3_BIN) + " report " + t.path.string() + " > " +
                    (t.path / "out.txt").string() + " 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << io::read_file((t.path / "out.txt").string());
  EXPECT_TRUE(fs::is_regular_file(t.path / "report.html"));
  EXPECT_TRUE(fs::is_regular_file(t.path / "loss.svg"));
  std::string bad =
      std::string(DSV3_BIN) + " report " + (t.path / "nope").string() + " > /dev/null 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
}

TEST(Progress, FormatsTheDocumentedLine) {
  ProgressInfo p;
  p.step = 120;
  p.total_steps = 600;
  p.loss = 4.2131;
  p.mtp_loss = 4.512;
  p.val_loss = 4.2968;
  p.lr = 3e-4;
  p.tokens_per_s = 12345;
  p.mfu = 0.312;
  p.max_vio = 0.181;
  p.eta_s = 130;
  EXPECT_EQ(format_progress(p),
            "step 120/600 | loss 4.213 (mtp 4.51) | val 4.30 | lr 3.0e-4 | 12.3k tok/s | "
            "MFU 31% | MaxVio 0.18 | ETA 2m10s");
  ProgressInfo q;
  q.step = 1;
  q.total_steps = 10;
  q.loss = 9;
  EXPECT_EQ(format_progress(q), "step 1/10 | loss 9.000");
  EXPECT_EQ(format_lr(9.96e-4), "1.0e-3");
  EXPECT_EQ(format_lr(1e-5), "1.0e-5");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(4.5e6), "4.50M");
  EXPECT_EQ(format_duration(45), "45s");
  EXPECT_EQ(format_duration(3725), "1h02m");
}

TEST(Progress, LinePrintsEveryNStepsWhenNotATerminal) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressLine line(25, 0, 10, 0, f);
    for (int64_t s = 1; s <= 25; ++s) {
      ProgressInfo p;
      p.step = s;
      p.total_steps = 25;
      p.loss = 1;
      line.update(p);
      if (s == 12) line.message("sample: hello");
    }
  }
  std::rewind(f);
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f)) out += buf;
  std::fclose(f);
  EXPECT_EQ(count(out, "\n"), 4u);  // steps 10, 20, 25 and the message
  EXPECT_NE(out.find("step 10/25"), std::string::npos);
  EXPECT_NE(out.find("step 25/25"), std::string::npos);
  EXPECT_NE(out.find("sample: hello\n"), std::string::npos);
  EXPECT_NE(out.find("ETA"), std::string::npos);
  EXPECT_EQ(out.find('\r'), std::string::npos);
}
