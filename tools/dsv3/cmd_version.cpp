// `dsv3 info`: build and machine facts (threads, CUDA), handy in bug reports.
#include <omp.h>

#include <cstdio>

#include "backend/cuda/cuda.hpp"
#include "command.hpp"

static void setup(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "Print build and machine facts");
  sub->callback([] {
    std::printf("dsv3 0.1.0\nthreads: %d\ncuda: %s\n", omp_get_max_threads(),
                dsv3::cuda::device_summary().c_str());
  });
}
DSV3_COMMAND(setup);
