// Implementation of report.hpp: a small SVG plotter (line charts with nice ticks, a diverging
// heatmap) and the HTML page assembled from them.
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

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                          "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
constexpr int kMaxPoints = 2000;
constexpr int kMaxColumns = 100;

std::string color(size_t i) {
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

// Tick step of 1, 2 or 5 times a power of ten giving about `n` ticks over `range`.
double nice_step(double range, int n) {
  if (!(range > 0)) return 1;
  double raw = range / n, p = std::pow(10.0, std::floor(std::log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

std::string tick_label(double v, double step) {
  if (std::fabs(v) < 1e-9 * step) v = 0;  // no "-0.0" from accumulated steps
  double a = std::fabs(v);
  if (a != 0 && (a >= 1e5 || a < 1e-3)) return fmt::format("{:.1e}", v);
  int dec = step >= 1 ? 0 : int(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, std::min(dec, 6));
}

std::string svg_open(int w, int h) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"#fff\"/>\n",
      w, h);
}

std::string text(double x, double y, const std::string& s, const char* anchor = "start",
                 const char* extra = "") {
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\"{}>{}</text>\n", x, y,
                     anchor, extra, xml_escape(s));
}

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
    s->color = color(c++);
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

std::string summary_table(const std::vector<NamedLog>& runs) {
  std::string s =
      "<table>\n<tr><th>run</th><th>steps</th><th>train loss (last 10%)</th>"
      "<th>val loss (last)</th><th>MTP loss (last 10%)</th>"
      "<th>MaxVio (last 10%, mean over layers)</th><th>tokens/s</th><th>MFU</th></tr>\n";
  for (const auto& r : runs) {
    const MetricsLog& log = *r.log;
    std::vector<double> loss, mtp, vio, tps, mfu;
    for (const auto& st : log.steps) {
      loss.push_back(st.loss);
      mtp.push_back(st.mtp_loss);
      vio.push_back(st.max_vio.empty() ? kNoValue : mean(st.max_vio));
      tps.push_back(st.tokens_per_s);
      mfu.push_back(st.mfu);
    }
    double val = log.evals.empty() ? kNoValue : log.evals.back().val_loss;
    int64_t steps = log.steps.empty() ? 0 : log.steps.back().step;
    double m = mean(mfu);
    s += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td></tr>\n",
        xml_escape(r.label), steps, fmt_or_dash(mean_tail(loss, 0.1)), fmt_or_dash(val),
        fmt_or_dash(mean_tail(mtp, 0.1)), fmt_or_dash(mean_tail(vio, 0.1)),
        fmt_or_dash(mean(tps), "{:.0f}"),
        std::isfinite(m) ? fmt::format("{:.1f}%", 100 * m) : "&ndash;");
  }
  return s + "</table>\n";
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
    s.color = color(l);
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

std::string xml_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        // Control characters other than tab and newline are not allowed in XML.
        if (uint8_t(c) < 0x20 && c != '\n' && c != '\t')
          o += ' ';
        else
          o += c;
    }
  }
  return o;
}

std::string svg_line_chart(const ChartOptions& opt, const std::vector<Series>& series) {
  const int w = opt.width, h = opt.height, ml = 62, mr = 16, mt = 28, mb = 40;
  const double pw = w - ml - mr, ph = h - mt - mb;
  auto ty = [&](double v) { return opt.log_y ? std::log10(v) : v; };
  // The legend goes below the plot, wrapped to the chart width; the SVG grows to hold it.
  std::vector<std::pair<double, double>> legend;
  double lx = ml, ly = h + 8;
  for (const auto& s : series) {
    double iw = 40 + 6.2 * double(s.label.size());
    if (lx + iw > w - mr && lx > ml) lx = ml, ly += 16;
    legend.emplace_back(lx, ly);
    lx += iw;
  }
  const int total_h = series.empty() ? h : int(ly + 10);
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || (opt.log_y && s.y[i] <= 0)) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, ty(s.y[i])), y1 = std::max(y1, ty(s.y[i]));
    }
  std::string o = svg_open(w, total_h);
  o += text(w / 2.0, 16, opt.title, "middle", " font-size=\"13\" font-weight=\"bold\"");
  if (!std::isfinite(x0)) {
    o += text(w / 2.0, h / 2.0, "no data", "middle", " fill=\"#888\"");
    return o + "</svg>\n";
  }
  if (x1 == x0) x0 -= 1, x1 += 1;
  double pad = (y1 - y0) * 0.05;
  if (pad == 0) pad = std::max(std::fabs(y0) * 0.05, 1e-3);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return ml + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return mt + (1 - (ty(y) - y0) / (y1 - y0)) * ph; };
  o += fmt::format("<g class=\"axes\" stroke=\"#ccc\" stroke-width=\"1\">\n");
  double xs = nice_step(x1 - x0, 6), ys = nice_step(y1 - y0, 5);
  std::string labels;
  for (double v = std::ceil(x0 / xs) * xs; v <= x1 + 1e-9 * xs; v += xs) {
    o += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\"/>\n", px(v), mt,
                     mt + ph);
    labels += text(px(v), mt + ph + 14, tick_label(v, xs), "middle");
  }
  for (double v = std::ceil(y0 / ys) * ys; v <= y1 + 1e-9 * ys; v += ys) {
    double yy = mt + (1 - (v - y0) / (y1 - y0)) * ph;
    o += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\"/>\n", ml, yy, ml + pw,
                     yy);
    labels += text(ml - 4, yy + 4,
                   opt.log_y ? fmt::format("{:.3g}", std::pow(10.0, v)) : tick_label(v, ys), "end");
  }
  o += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" "
      "stroke=\"#888\"/>\n</g>\n",
      ml, mt, pw, ph);
  o += labels;
  o += text(ml + pw / 2, h - 6, opt.x_label, "middle");
  o += text(14, mt + ph / 2, opt.y_label, "middle",
            fmt::format(" transform=\"rotate(-90 14 {:.1f})\"", mt + ph / 2).c_str());
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    std::string col = s.color.empty() ? color(k) : s.color;
    size_t n = std::min(s.x.size(), s.y.size());
    size_t stride = std::max<size_t>(1, n / kMaxPoints);
    std::string d;
    bool pen = false;
    for (size_t i = 0; i < n; i += stride) {
      bool ok = std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && !(opt.log_y && s.y[i] <= 0);
      if (!ok) {
        pen = false;
        continue;
      }
      if (s.points) {
        d += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\"/>", px(s.x[i]), py(s.y[i]));
      } else {
        d += fmt::format("{}{:.1f},{:.1f} ", pen ? "L" : "M", px(s.x[i]), py(s.y[i]));
        pen = true;
      }
    }
    if (s.points)
      o += fmt::format("<g class=\"series\" fill=\"{}\">{}</g>\n", col, d);
    else
      o += fmt::format(
          "<path class=\"series\" d=\"{}\" fill=\"none\" stroke=\"{}\" "
          "stroke-width=\"1.5\"{}/>\n",
          d, col, s.dashed ? " stroke-dasharray=\"5,3\"" : "");
    auto [kx, ky] = legend[k];
    o += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
        "stroke-width=\"{}\"{}/>\n",
        kx, ky - 4, kx + 20, ky - 4, col, s.points ? 5 : 2,
        s.dashed ? " stroke-dasharray=\"5,3\"" : (s.points ? " stroke-dasharray=\"5,5\"" : ""));
    o += text(kx + 24, ky, s.label);
  }
  return o + "</svg>\n";
}

std::string svg_expert_heatmap(const std::string& title, const std::vector<int64_t>& steps,
                               const std::vector<std::vector<double>>& load, int width) {
  size_t experts = 0;
  for (const auto& l : load) experts = std::max(experts, l.size());
  const int ml = 62, mr = 16, mt = 28, mb = 58;
  const double pw = width - ml - mr;
  const double ch = experts ? std::clamp(240.0 / double(experts), 2.0, 14.0) : 0;
  const int h = int(mt + ch * double(experts) + mb);
  std::string o = svg_open(width, std::max(h, 80));
  o += text(width / 2.0, 16, "expert load: " + title, "middle",
            " font-size=\"13\" font-weight=\"bold\"");
  if (experts == 0 || steps.empty()) {
    o += text(width / 2.0, 50, "no expert-load data", "middle", " fill=\"#888\"");
    return o + "</svg>\n";
  }
  size_t n = std::min(steps.size(), load.size());
  size_t cols = std::min<size_t>(n, kMaxColumns);
  double cw = pw / double(cols);
  o += "<g class=\"heatmap\" shape-rendering=\"crispEdges\">\n";
  for (size_t c = 0; c < cols; ++c) {
    size_t b = n * c / cols, e = std::max(b + 1, n * (c + 1) / cols);
    // Share of each expert averaged over the bucket, as a ratio to the even share 1/E.
    std::vector<double> ratio(experts, 0.0);
    for (size_t s = b; s < e; ++s) {
      double tot = 0;
      for (double v : load[s]) tot += std::max(0.0, v);
      for (size_t x = 0; x < load[s].size() && tot > 0; ++x)
        ratio[x] += std::max(0.0, load[s][x]) / tot * double(experts) / double(e - b);
    }
    for (size_t x = 0; x < experts; ++x) {
      // log2 ratio clamped to [-2, 2]: blue = 4x under even load, white = even, red = 4x over.
      double t = std::clamp(std::log2(std::max(ratio[x], 1e-9)) / 2.0, -1.0, 1.0);
      int r = t < 0 ? int(255 * (1 + t)) : 255, g = int(255 * (1 - std::fabs(t))),
          bl = t > 0 ? int(255 * (1 - t)) : 255;
      o += fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" "
          "fill=\"#{:02x}{:02x}{:02x}\"/>\n",
          ml + cw * double(c), mt + ch * double(x), cw + 0.05, ch, r, g, bl);
    }
  }
  o += "</g>\n";
  double bottom = mt + ch * double(experts);
  o += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#888\"/>\n",
      ml, mt, pw, bottom - mt);
  o += text(ml - 4, mt + 10, "expert 0", "end");
  o += text(ml - 4, bottom, fmt::format("{}", experts - 1), "end");
  o += text(ml, bottom + 14, fmt::format("step {}", steps.front()));
  o += text(ml + pw, bottom + 14, fmt::format("step {}", steps[n - 1]), "end");
  // Colour legend.
  double lx = ml + pw / 2 - 100, ly = bottom + 24;
  for (int i = 0; i < 40; ++i) {
    double t = -1 + 2 * (i + 0.5) / 40;
    int r = t < 0 ? int(255 * (1 + t)) : 255, g = int(255 * (1 - std::fabs(t))),
        bl = t > 0 ? int(255 * (1 - t)) : 255;
    o += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"5.2\" height=\"8\" "
        "fill=\"#{:02x}{:02x}{:02x}\"/>\n",
        lx + 5 * i, ly, r, g, bl);
  }
  o += text(lx - 4, ly + 8, "1/4 even", "end");
  o += text(lx + 100, ly + 20, "even share", "middle");
  o += text(lx + 204, ly + 8, "4x even");
  return o + "</svg>\n";
}

std::string render_loss_svg(const NamedLog& run, const NamedLog* other) {
  std::vector<Series> s;
  add_loss_series(&s, run, false, 0);
  if (other) add_loss_series(&s, *other, true, 4);
  return svg_line_chart({"loss", "step", "cross-entropy (nats/token)", 720, 360}, s);
}

std::string render_report_html(const NamedLog& run, const NamedLog* other) {
  std::vector<NamedLog> runs{run};
  if (other) runs.push_back(*other);
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<title>dsv3 training report: " + xml_escape(run.label) + "</title>\n";
  h += std::string("<style>") + kCss + "</style>\n</head>\n<body>\n";
  h += "<h1>dsv3 training report: " + xml_escape(run.label) + "</h1>\n";
  if (other)
    h += "<p class=\"note\">Compared with <b>" + xml_escape(other->label) +
         "</b> (dashed lines, right-hand heatmaps).</p>\n";
  h += section("Summary", summary_table(runs));
  h += section("Loss", render_loss_svg(run, other));

  std::vector<Series> lr, tps;
  for (size_t i = 0; i < runs.size(); ++i) {
    Series a = step_series(*runs[i].log, runs[i].label, [](const StepRecord& r) { return r.lr; });
    Series b = step_series(*runs[i].log, runs[i].label,
                           [](const StepRecord& r) { return r.tokens_per_s; });
    a.color = b.color = color(i);
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

ReportPaths write_report(const std::string& run_dir, const std::string& compare_dir) {
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
  MetricsLog other_log;
  NamedLog other;
  if (!compare_dir.empty()) {
    out.compared_with = (fs::path(compare_dir) / "metrics.jsonl").string();
    DSV3_CHECK(fs::is_regular_file(out.compared_with), "--compare {}: it has no metrics.jsonl",
               compare_dir);
  } else if (fs::is_regular_file(dir / "baseline" / "metrics.jsonl")) {
    out.compared_with = (dir / "baseline" / "metrics.jsonl").string();
  }
  if (!out.compared_with.empty()) {
    other_log = read_metrics(out.compared_with);
    fs::path od = fs::path(out.compared_with).parent_path();
    other = {label_of(other_log, od), &other_log};
    if (other.label == run.label) other.label += " (compared)";
  }
  const NamedLog* op = out.compared_with.empty() ? nullptr : &other;
  out.html = (dir / "report.html").string();
  out.loss_svg = (dir / "loss.svg").string();
  io::atomic_write(out.html, render_report_html(run, op));
  io::atomic_write(out.loss_svg,
                   "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + render_loss_svg(run, op));
  return out;
}

}  // namespace dsv3::train
