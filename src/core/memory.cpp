// Machine memory from sysconf and the cgroup v2 limit; see memory.hpp.
#include "core/memory.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "core/error.hpp"

namespace dsv3 {

namespace {
uint64_t cgroup_limit() {
  std::ifstream f("/sys/fs/cgroup/memory.max");
  std::string s;
  if (!(f >> s) || s == "max") return UINT64_MAX;
  try {
    return std::stoull(s);
  } catch (const std::exception&) {
    return UINT64_MAX;
  }
}
}  // namespace

uint64_t machine_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const uint64_t phys = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : UINT64_MAX;
  return std::min(phys, cgroup_limit());
}

std::string format_bytes(double bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} bytes", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

void check_fits_in_memory(double bytes, const std::string& what) {
  const uint64_t have = machine_memory_bytes();
  DSV3_CHECK(std::isfinite(bytes) && bytes <= double(have),
             "{} needs at least {} of memory, but this machine has {}", what, format_bytes(bytes),
             format_bytes(double(have)));
}

}  // namespace dsv3
