// Implementation of svg.hpp: line charts with nice ticks and a diverging heatmap, as plain SVG
// text.
#include "train/svg.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace dsv3::train {

namespace {

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                          "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
constexpr int kMaxPoints = 2000;
constexpr int kMaxColumns = 100;

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

}  // namespace

std::string svg_color(size_t i) {
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

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
    std::string col = s.color.empty() ? svg_color(k) : s.color;
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

}  // namespace dsv3::train
