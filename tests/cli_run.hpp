// Runs the `dsv3` binary under test (DSV3_BIN, set by tests/CMakeLists.txt) through the shell as
// a person would, capturing its output and exit status.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace dsv3::testing {

struct CliResult {
  int status = 0;   // exit status; -1 when killed by a signal
  std::string out;  // stdout and stderr together (or stdout alone)
};

inline CliResult run_cli(const std::string& args, bool with_stderr = true) {
  const std::string cmd =
      std::string(DSV3_BIN) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed: " + cmd};
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace dsv3::testing
