// Implementation of progress.hpp.
#include "train/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>

namespace dsv3::train {

std::string format_count(double v) {
  if (!std::isfinite(v)) return "?";
  double a = std::fabs(v);
  if (a < 1e3) return fmt::format("{:.0f}", v);
  if (a < 1e6) return fmt::format("{:.1f}k", v / 1e3);
  if (a < 1e9) return fmt::format("{:.2f}M", v / 1e6);
  return fmt::format("{:.2f}G", v / 1e9);
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = int64_t(std::llround(s));
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
}

std::string format_lr(double lr) {
  if (!std::isfinite(lr)) return "?";
  if (lr == 0) return "0";
  // printf's %e pads the exponent to two digits ("3.0e-04"); the short form reads better.
  int e = int(std::floor(std::log10(std::fabs(lr))));
  double m = std::round(lr / std::pow(10.0, e) * 10) / 10;
  if (std::fabs(m) >= 10) m /= 10, ++e;
  return fmt::format("{:.1f}e{}", m, e);
}

std::string format_progress(const ProgressInfo& p) {
  std::string s = fmt::format("step {}/{} | loss {:.3f}", p.step, p.total_steps, p.loss);
  if (std::isfinite(p.mtp_loss)) s += fmt::format(" (mtp {:.2f})", p.mtp_loss);
  if (std::isfinite(p.val_loss)) s += fmt::format(" | val {:.2f}", p.val_loss);
  if (std::isfinite(p.lr)) s += " | lr " + format_lr(p.lr);
  if (std::isfinite(p.tokens_per_s)) s += " | " + format_count(p.tokens_per_s) + " tok/s";
  if (std::isfinite(p.mfu)) s += fmt::format(" | MFU {:.0f}%", 100 * p.mfu);
  if (std::isfinite(p.max_vio)) s += fmt::format(" | MaxVio {:.2f}", p.max_vio);
  if (std::isfinite(p.eta_s)) s += " | ETA " + format_duration(p.eta_s);
  return s;
}

ProgressLine::ProgressLine(int64_t total_steps, int64_t first_step, int64_t every_n, int tty,
                           FILE* out)
    : total_(total_steps),
      first_(first_step),
      every_(every_n > 0 ? every_n : 1),
      tty_(tty < 0 ? isatty(fileno(out)) != 0 : tty != 0),
      out_(out),
      start_(std::chrono::steady_clock::now()) {}

ProgressLine::~ProgressLine() {
  finish();
}

void ProgressLine::update(ProgressInfo p) {
  if (std::isnan(p.eta_s) && p.step > first_) {
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    p.eta_s = el / double(p.step - first_) * double(total_ - p.step);
  }
  std::string line = format_progress(p);
  if (tty_) {
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    drawn_ = true;
  } else if (p.step % every_ == 0 || p.step == total_) {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressLine::message(const std::string& msg) {
  if (tty_ && drawn_) std::fprintf(out_, "\r\033[K");
  std::fprintf(out_, "%s\n", msg.c_str());
  drawn_ = false;
  std::fflush(out_);
}

void ProgressLine::finish() {
  if (tty_ && drawn_) std::fprintf(out_, "\n");
  drawn_ = false;
  std::fflush(out_);
}

}  // namespace dsv3::train
