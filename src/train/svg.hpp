// A small SVG plotter for the run report (report.hpp): line charts with nice 1-2-5 ticks, an
// optional log y axis and a legend, and a diverging expert-load heatmap. Output is plain SVG text,
// self-contained (no scripts, no external fonts).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::train {

// Building blocks of the report, exposed for tests and for other plots.
struct Series {
  std::string label;
  std::vector<double> x, y;  // non-finite y values break the line
  std::string color;
  bool dashed = false;
  bool points = false;  // markers instead of a line (sparse series such as validation loss)
};

struct ChartOptions {
  std::string title, x_label, y_label;
  int width = 640, height = 300;
  bool log_y = false;
};

std::string svg_line_chart(const ChartOptions& opt, const std::vector<Series>& series);

// load[s][e]: load of expert e at steps[s] (any unit; each step is normalized to shares).
// Columns are averaged down to at most 100.
std::string svg_expert_heatmap(const std::string& title, const std::vector<int64_t>& steps,
                               const std::vector<std::vector<double>>& load, int width = 640);

std::string xml_escape(const std::string& s);

// The i-th colour of the chart palette (cycles).
std::string svg_color(size_t i);

}  // namespace dsv3::train
