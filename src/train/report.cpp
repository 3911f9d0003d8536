// Implementation of report.hpp: the HTML page and loss.svg assembled from the charts of svg.hpp.
#include "train/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.hpp"
#include "io/file.hpp"

namespace dsv3::train {

namespace fs = std::filesystem;

namespace {

// Picks the values of one field out of the step records.
template <typename Get>
Series step_series(const MetricsLog& log, const std::string& label, Get get) {
  Series s;
  s.label = label;
  for (const auto& r : log.steps) {
    s.x.push_back(double(r.step));
    s.y.push_back(get(r));
  }
  return s;
}

bool any_finite(const Series& s) {
  return std::any_of(s.y.begin(), s.y.end(), [](double v) { return std::isfinite(v); });
}

double mean_tail(const std::vector<double>& v, double frac) {
  size_t n = v.size(), from = n - std::max<size_t>(1, size_t(double(n) * frac));
  double sum = 0;
  int cnt = 0;
  for (size_t i = n ? from : 0; i < n; ++i)
    if (std::isfinite(v[i])) sum += v[i], ++cnt;
  return cnt ? sum / cnt : kNoValue;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  int n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += x, ++n;
  return n ? s / n : kNoValue;
}

std::string fmt_or_dash(double v, const char* spec = "{:.3f}") {
  return std::isfinite(v) ? fmt::format(fmt::runtime(spec), v) : "&ndash;";
}

// Loss series of one run: training main/MTP as lines, validation main/MTP as markers.
void add_loss_series(std::vector<Series>* out, const NamedLog& run, bool dashed, size_t c0) {
  const MetricsLog& log = *run.log;
  std::string p = run.label.empty() ? "" : run.label + ": ";
  Series train = step_series(log, p + "train", [](const StepRecord& r) { return r.loss; });
  Series mtp = step_series(log, p + "train MTP", [](const StepRecord& r) { return r.mtp_loss; });
  Series val, val_mtp;
  val.label = p + "validation";
  val_mtp.label = p + "validation MTP";
  for (const auto& e : log.evals) {
    val.x.push_back(double(e.step));
    val.y.push_back(e.val_loss);
    val_mtp.x.push_back(double(e.step));
    val_mtp.y.push_back(e.val_mtp_loss);
  }
  val.points = val_mtp.points = true;
  size_t c = c0;
  for (Series* s : {&train, &mtp, &val, &val_mtp}) {
    s->color = svg_color(c++);
    s->dashed = dashed;
    if (any_finite(*s)) out->push_back(std::move(*s));
  }
}

std::string section(const std::string& title, const std::string& body) {
  return fmt::format("<h2>{}</h2>\n{}\n", xml_escape(title), body);
}

std::string row(const std::vector<std::string>& cells) {
  std::string s = "<div class=\"row\">\n";
  for (const auto& c : cells) s += "<div class=\"cell\">\n" + c + "</div>\n";
  return s + "</div>\n";
}

// Which peak a run's MFU is over, from its run record: the FP32 FMA peak (mfu_peak, since the
// register-only probe) or, in runs of older builds, a timed FP32 GEMM (fp32_peak_flops).
std::string mfu_note(const NamedLog& r) {
  const auto& x = r.log->run.extra;
  std::string what;
  if (x.contains("mfu_peak") && x["mfu_peak"].is_string() && x.contains("mfu_peak_flops") &&
      x["mfu_peak_flops"].is_number())
    what = fmt::format(
        "model FLOPs per second over the hardware FP32 FMA peak ({}, register-only probe: "
        "{:.1f} GFLOP/s on {} threads)",
        x["mfu_peak"].get<std::string>(), x["mfu_peak_flops"].get<double>() / 1e9,
        x.contains("threads") && x["threads"].is_number_integer() ? x["threads"].get<int>() : 0);
  else if (x.contains("fp32_peak_flops") && x["fp32_peak_flops"].is_number())
    what = fmt::format(
        "over a timed FP32 GEMM ({:.1f} GFLOP/s; written by an older dsv3), not the hardware "
        "FMA peak: it overstates MFU",
        x["fp32_peak_flops"].get<double>() / 1e9);
  else
    return "";
  return "<p class=\"note\">MFU of " + xml_escape(r.label) + ": " + xml_escape(what) + ".</p>\n";
}

// The final losses of a run: training (mean of the last 10% of steps), validation (last eval).
struct FinalLoss {
  double train = kNoValue, val = kNoValue;
};
FinalLoss final_loss(const MetricsLog& log) {
  std::vector<double> loss;
  for (const auto& st : log.steps) loss.push_back(st.loss);
  return {mean_tail(loss, 0.1), log.evals.empty() ? kNoValue : log.evals.back().val_loss};
}

// (b − a) / a in percent with its sign, or a dash.
std::string rel_diff(double b, double a) {
  if (!std::isfinite(a) || !std::isfinite(b) || a == 0) return "&ndash;";
  return fmt::format("{:+.2f}%", 100 * (b - a) / a);
}

// One row per run; with several runs, the first run's final losses relative to each other run
// ("first vs this": an ablation's question, e.g. FP8's loss against BF16's).
std::string summary_table(const std::vector<NamedLog>& runs) {
  const bool cmp = runs.size() > 1;
  std::string s =
      "<table>\n<tr><th>run</th><th>steps</th><th>train loss (last 10%)</th>"
      "<th>val loss (last)</th><th>MTP loss (last 10%)</th>"
      "<th>MaxVio (last 10%, mean over layers)</th><th>tokens/s</th><th>MFU</th>";
  if (cmp)
    s += "<th>" + xml_escape(runs[0].label) + " vs this: train loss</th><th>" +
         xml_escape(runs[0].label) + " vs this: val loss</th>";
  s += "</tr>\n";
  const FinalLoss first = final_loss(*runs[0].log);
  for (const auto& r : runs) {
    const MetricsLog& log = *r.log;
    std::vector<double> mtp, vio, tps, mfu;
    for (const auto& st : log.steps) {
      mtp.push_back(st.mtp_loss);
      vio.push_back(st.max_vio.empty() ? kNoValue : mean(st.max_vio));
      tps.push_back(st.tokens_per_s);
      mfu.push_back(st.mfu);
    }
    const FinalLoss f = final_loss(log);
    int64_t steps = log.steps.empty() ? 0 : log.steps.back().step;
    double m = mean(mfu);
    s += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td>",
        xml_escape(r.label), steps, fmt_or_dash(f.train), fmt_or_dash(f.val),
        fmt_or_dash(mean_tail(mtp, 0.1)), fmt_or_dash(mean_tail(vio, 0.1)),
        fmt_or_dash(mean(tps), "{:.0f}"),
        std::isfinite(m) ? fmt::format("{:.1f}%", 100 * m) : "&ndash;");
    if (cmp)
      s += &r == &runs[0] ? "<td>&ndash;</td><td>&ndash;</td>"
                          : fmt::format("<td>{}</td><td>{}</td>", rel_diff(first.train, f.train),
                                        rel_diff(first.val, f.val));
    s += "</tr>\n";
  }
  s += "</table>\n";
  for (const auto& r : runs) s += mfu_note(r);
  return s;
}

std::string maxvio_chart(const NamedLog& run) {
  const MetricsLog& log = *run.log;
  size_t layers = 0;
  for (const auto& s : log.steps) layers = std::max(layers, s.max_vio.size());
  std::vector<Series> series;
  for (size_t l = 0; l < layers; ++l) {
    std::string name = l < log.run.moe_layers.size()
                           ? fmt::format("layer {}", log.run.moe_layers[l])
                           : fmt::format("MoE layer {}", l);
    Series s = step_series(log, name, [l](const StepRecord& r) {
      return l < r.max_vio.size() ? r.max_vio[l] : kNoValue;
    });
    s.color = svg_color(l);
    series.push_back(std::move(s));
  }
  return svg_line_chart({"MaxVio per MoE layer: " + run.label, "step", "MaxVio", 480, 280}, series);
}

std::string heatmap(const NamedLog& run, size_t layer) {
  std::vector<int64_t> steps;
  std::vector<std::vector<double>> load;
  for (const auto& s : run.log->steps)
    if (layer < s.expert_load.size() && !s.expert_load[layer].empty()) {
      steps.push_back(s.step);
      load.push_back(s.expert_load[layer]);
    }
  const auto& ids = run.log->run.moe_layers;
  std::string name =
      layer < ids.size() ? fmt::format("layer {}", ids[layer]) : fmt::format("MoE layer {}", layer);
  return svg_expert_heatmap(run.label + ", " + name, steps, load, 480);
}

size_t moe_layer_count(const MetricsLog& log) {
  size_t n = 0;
  for (const auto& s : log.steps) n = std::max(n, s.expert_load.size());
  return n;
}

const char* kCss =
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}"
    "h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}"
    ".row{display:flex;flex-wrap:wrap;gap:16px}.cell{flex:0 0 auto}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}"
    "pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;font-size:12px}"
    ".note{color:#555;font-size:13px}";

}  // namespace

std::string render_loss_svg(const NamedLog& run, const std::vector<NamedLog>& others) {
  std::vector<Series> s;
  add_loss_series(&s, run, false, 0);
  for (size_t i = 0; i < others.size(); ++i) add_loss_series(&s, others[i], true, 4 * (i + 1));
  return svg_line_chart({"loss", "step", "cross-entropy (nats/token)", 720, 360}, s);
}

std::string render_report_html(const NamedLog& run, const std::vector<NamedLog>& others) {
  std::vector<NamedLog> runs{run};
  runs.insert(runs.end(), others.begin(), others.end());
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<title>dsv3 training report: " + xml_escape(run.label) + "</title>\n";
  h += std::string("<style>") + kCss + "</style>\n</head>\n<body>\n";
  h += "<h1>dsv3 training report: " + xml_escape(run.label) + "</h1>\n";
  if (!others.empty()) {
    std::string names;
    for (size_t i = 0; i < others.size(); ++i)
      names += (i ? ", <b>" : "<b>") + xml_escape(others[i].label) + "</b>";
    h += "<p class=\"note\">Compared with " + names +
         " (dashed lines; their heatmaps to the right, in this order).</p>\n";
  }
  h += section("Summary", summary_table(runs));
  h += section("Loss", render_loss_svg(run, others));

  std::vector<Series> lr, tps;
  for (size_t i = 0; i < runs.size(); ++i) {
    Series a = step_series(*runs[i].log, runs[i].label, [](const StepRecord& r) { return r.lr; });
    Series b = step_series(*runs[i].log, runs[i].label,
                           [](const StepRecord& r) { return r.tokens_per_s; });
    a.color = b.color = svg_color(i);
    a.dashed = b.dashed = i > 0;
    lr.push_back(std::move(a));
    tps.push_back(std::move(b));
  }
  h += section("Learning rate and throughput",
               row({svg_line_chart({"learning rate", "step", "LR", 480, 260}, lr),
                    svg_line_chart({"throughput", "step", "tokens/s", 480, 260}, tps)}));

  std::vector<std::string> vio;
  for (const auto& r : runs) vio.push_back(maxvio_chart(r));
  h += section("Load balance: MaxVio",
               "<p class=\"note\">MaxVio = max over experts of (load &minus; mean load) / mean "
               "load, per MoE layer and step; 0 is a perfect balance.</p>\n" +
                   row(vio));

  size_t layers = 0;
  for (const auto& r : runs) layers = std::max(layers, moe_layer_count(*r.log));
  std::string maps =
      "<p class=\"note\">Rows are experts, columns are steps; colour is an expert's share of the "
      "routed tokens relative to an even share (white = even, red = overloaded, blue = "
      "underused).</p>\n";
  for (size_t l = 0; l < layers; ++l) {
    std::vector<std::string> cells;
    for (const auto& r : runs) cells.push_back(heatmap(r, l));
    maps += row(cells);
  }
  if (layers == 0) maps += "<p class=\"note\">No expert-load data recorded.</p>\n";
  h += section("Expert load per MoE layer", maps);

  if (!run.log->samples.empty()) {
    int64_t last = run.log->samples.back().step;
    std::string body;
    for (const auto& s : run.log->samples)
      if (s.step == last)
        body += "<pre><b>" + xml_escape(s.prompt) + "</b>" +
                xml_escape(s.text.substr(0, std::min<size_t>(s.text.size(), 4000))) + "</pre>\n";
    h += section(fmt::format("Samples at step {}", last), body);
  }
  return h + "</body>\n</html>\n";
}

ReportPaths write_report(const std::string& run_dir, const std::vector<std::string>& compare_dirs) {
  fs::path dir(run_dir);
  std::string mpath = (dir / "metrics.jsonl").string();
  DSV3_CHECK(fs::is_regular_file(mpath), "{} has no metrics.jsonl (is it a training run dir?)",
             run_dir);
  MetricsLog log = read_metrics(mpath);
  auto label_of = [](const MetricsLog& l, const fs::path& d) {
    if (l.has_run && !l.run.name.empty()) return l.run.name;
    std::string n = fs::weakly_canonical(d).filename().string();
    return n.empty() ? d.string() : n;
  };
  NamedLog run{label_of(log, dir), &log};

  ReportPaths out;
  for (const auto& c : compare_dirs) {
    out.compared_with.push_back((fs::path(c) / "metrics.jsonl").string());
    DSV3_CHECK(fs::is_regular_file(out.compared_with.back()),
               "--compare {}: it has no metrics.jsonl", c);
  }
  if (compare_dirs.empty() && fs::is_regular_file(dir / "baseline" / "metrics.jsonl"))
    out.compared_with.push_back((dir / "baseline" / "metrics.jsonl").string());
  // Read all first: NamedLog points into other_logs, which must not grow afterwards.
  std::vector<MetricsLog> other_logs;
  for (const auto& m : out.compared_with) other_logs.push_back(read_metrics(m));
  std::vector<NamedLog> others;
  for (size_t i = 0; i < other_logs.size(); ++i) {
    NamedLog o{label_of(other_logs[i], fs::path(out.compared_with[i]).parent_path()),
               &other_logs[i]};
    auto taken = [&](const std::string& l) {
      if (l == run.label) return true;
      for (const auto& p : others)
        if (p.label == l) return true;
      return false;
    };
    if (taken(o.label)) {
      std::string base = o.label + " (compared";
      o.label = base + ")";
      for (int k = 2; taken(o.label); ++k) o.label = fmt::format("{} {})", base, k);
    }
    others.push_back(std::move(o));
  }
  out.html = (dir / "report.html").string();
  out.loss_svg = (dir / "loss.svg").string();
  io::atomic_write(out.html, render_report_html(run, others));
  io::atomic_write(out.loss_svg,
                   "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + render_loss_svg(run, others));
  return out;
}

}  // namespace dsv3::train
