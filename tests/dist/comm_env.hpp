// The job's communicator, made once by test_comm.cpp's main() for every test of test_dist, and a
// scratch dir per job.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "core/dtype.hpp"
#include "dist/comm.hpp"

extern dsv3::dist::Comm* g_comm;

// One scratch dir for the job, dsv3-test-<name>-<ranks>-<rank 0's pid> under the system temp
// dir, made empty by rank 0; every rank returns after it exists.
inline std::string job_dir(const std::string& name) {
  int64_t pid = g_comm->rank() == 0 ? int64_t(::getpid()) : 0;
  g_comm->all_reduce(&pid, 1, dsv3::DType::I64, dsv3::dist::ReduceOp::Max);
  const std::string d =
      (std::filesystem::temp_directory_path() /
       ("dsv3-test-" + name + "-" + std::to_string(g_comm->size()) + "-" + std::to_string(pid)))
          .string();
  if (g_comm->rank() == 0) {
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
  }
  g_comm->barrier();
  return d;
}
