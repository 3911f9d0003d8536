// Wall-clock timing for progress lines, reports and per-part forward times: a steady clock and
// the seconds since a point of it.
#pragma once
#include <chrono>

namespace dsv3 {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace dsv3
