// Implementation of log.hpp.
#include "core/log.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace dsv3 {

namespace {
LogLevel g_level = LogLevel::Info;
}

void set_log_level(LogLevel l) {
  g_level = l;
}

void log_message(LogLevel l, const std::string& msg) {
  if (l < g_level) return;
  static const char* tag[] = {"debug", "info", "warning", "error"};
  std::fprintf(stderr, "[dsv3 %s] %s\n", tag[int(l)], msg.c_str());
}

ProgressBar::ProgressBar(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(isatty(2)) {
  start_ = last_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::update(int64_t done, const std::string& extra) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_).count();
  if (since < (tty_ ? 0.1 : 5.0) && done < total_) return;
  last_ = now;
  double el = std::chrono::duration<double>(now - start_).count();
  double frac = total_ > 0 ? double(done) / double(total_) : 0.0;
  double eta = frac > 0 ? el * (1 - frac) / frac : 0;
  int width = 30, fill = int(frac * width);
  std::string bar(fill, '#');
  bar.resize(width, '.');
  std::string line = fmt::format("{} [{}] {}/{} {:.0f}s eta {:.0f}s {}", label_, bar, done, total_,
                                 el, eta, extra);
  if (tty_)
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
  else
    std::fprintf(stderr, "%s\n", line.c_str());
}

void ProgressBar::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string line = fmt::format("{} done in {:.1f}s {}", label_, el, extra);
  if (tty_)
    std::fprintf(stderr, "\r%s\033[K\n", line.c_str());
  else
    std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace dsv3
