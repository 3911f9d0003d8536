// Helpers of the libFuzzer targets: a per-process scratch dir for loaders that take a path, and
// the rule every target follows: dsv3::Error is the expected answer to bad input; any other
// exception escaping a loader, a sanitizer report, a hang or an abort is a bug.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace dsv3::fuzz {

// A directory of this process under $DSV3_FUZZ_SCRATCH (scripts/fuzz.sh sets it and removes it
// afterwards), else under /dev/shm (memory-backed) or the temp dir.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    namespace fs = std::filesystem;
    const char* env = std::getenv("DSV3_FUZZ_SCRATCH");
    const fs::path base = env                      ? fs::path(env)
                          : fs::exists("/dev/shm") ? fs::path("/dev/shm")
                                                   : fs::temp_directory_path();
    const fs::path d = base / ("dsv3-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d.string();
  }();
  return dir;
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

// Runs fn; dsv3::Error (bad input, refused with a message) is fine, anything else escapes to
// libFuzzer, which reports it as a crash.
template <typename Fn>
void expect_clean(Fn&& fn) {
  try {
    fn();
  } catch (const dsv3::Error&) {
  }
}

}  // namespace dsv3::fuzz
