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

}  // namespace dsv3
