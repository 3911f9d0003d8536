// The MPI communicator when dsv3 is built without MPI (DSV3_MPI=OFF or no MPI found).
#include <cstdio>
#include <cstdlib>

#include "core/error.hpp"
#include "dist/comm.hpp"

namespace dsv3::dist {

bool mpi_built() {
  return false;
}

void abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(code);
}

std::unique_ptr<Comm> make_mpi_comm() {
  DSV3_FAIL(
      "this dsv3 was built without MPI; install libopenmpi-dev (scripts/setup.sh does) and "
      "rebuild with -DDSV3_MPI=ON to run under mpirun");
}

}  // namespace dsv3::dist
