// Logging to stderr and a progress bar for long work (redrawn in place on a terminal, a line
// every few seconds otherwise).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace dsv3 {

enum class LogLevel { Debug, Info, Warn, Error };
void set_log_level(LogLevel l);
void log_message(LogLevel l, const std::string& msg);
inline void log_info(const std::string& m) {
  log_message(LogLevel::Info, m);
}
inline void log_warn(const std::string& m) {
  log_message(LogLevel::Warn, m);
}

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, bool enabled = true);
  ~ProgressBar();
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");

 private:
  std::string label_;
  int64_t total_;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace dsv3
