// The machine's memory, and the check that a request fits in it before anything is allocated:
// a size read from a file or a flag (hidden_size 1e12, --batch 1e9) must end in an error that
// says how much was asked for, not in std::bad_alloc or the OOM killer.
#pragma once
#include <cstdint>
#include <string>

namespace dsv3 {

// Bytes of memory this process may use: physical RAM (sysconf), lowered by a cgroup v2
// memory.max limit when one is set.
uint64_t machine_memory_bytes();

// "12.3 GiB", "512.0 MiB", "2.0 KiB": for messages.
std::string format_bytes(double bytes);

// Throws dsv3::Error when `bytes` (a double, so that products of huge sizes cannot wrap)
// exceeds machine_memory_bytes(); `what` names the request in the message.
void check_fits_in_memory(double bytes, const std::string& what);

}  // namespace dsv3
