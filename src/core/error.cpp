// Error construction, kept out of line so the check macros stay small at every call site.
#include "core/error.hpp"

namespace dsv3 {

void throw_error(const char* /*file*/, int /*line*/, const std::string& msg) {
  throw Error(msg);
}

void throw_assert(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(fmt::format("internal error (please report): {}:{}: assertion `{}` failed{}{}", file,
                          line, cond, msg.empty() ? "" : ": ", msg));
}

std::string json_error_text(const char* what) {
  std::string s = what;
  if (s.rfind("[json.exception.", 0) == 0) {
    const size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  if (!s.empty() && s[0] == '(') {
    const size_t close = s.find(") ");
    if (close != std::string::npos) {
      const std::string where = s.substr(1, close - 1);
      s = "at " + (where.empty() ? std::string("/") : where) + ": " + s.substr(close + 2);
    }
  }
  return s;
}

}  // namespace dsv3
