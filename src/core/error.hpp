// Errors: DSV3_CHECK for bad input (throws dsv3::Error with a message naming what is wrong),
// DSV3_ASSERT for internal bugs. Library code never exits; only tools/dsv3 may.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dsv3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
[[noreturn]] void throw_assert(const char* file, int line, const char* cond,
                               const std::string& msg);

// A nlohmann::json exception's what() without the library's "[json.exception.type_error.302]"
// tag, its JSON pointer (built with JSON_DIAGNOSTICS) moved to the front: "at /model/vocab/a:
// type must be number, but is string". Callers prefix the file's name.
std::string json_error_text(const char* what);

}  // namespace dsv3

// DSV3_CHECK(cond, "format {}", args...): user-facing error; the message must say what and where.
#define DSV3_CHECK(cond, ...)                                                       \
  do {                                                                              \
    if (!(cond)) ::dsv3::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

#define DSV3_FAIL(...) ::dsv3::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__))

// DSV3_ASSERT(cond, ...): an internal invariant; failing means a bug in dsv3.
#define DSV3_ASSERT(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) ::dsv3::throw_assert(__FILE__, __LINE__, #cond, fmt::format("" __VA_ARGS__)); \
  } while (0)
