// `dsv3 info`: build facts (threads, features), handy in bug reports.
#include <omp.h>

#include <cstdio>

#include "command.hpp"

static void setup(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "Print build and machine facts");
  sub->callback([] { std::printf("dsv3 0.1.0\nthreads: %d\n", omp_get_max_threads()); });
}
DSV3_COMMAND(setup);
