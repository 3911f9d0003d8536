// The communicator every distributed part of dsv3 talks through (data, expert and pipeline
// parallelism; DeepSeek-V3 report §3.2): all-reduce, reduce-scatter, all-gather, all-to-all-v,
// send/recv and barrier, blocking and non-blocking. Implementations: one process (`single`), MPI
// on CPU (`mpi`, Debian's OpenMPI; `DSV3_MPI` CMake option, a stub reporting its absence
// otherwise), NCCL on GPU later behind the same interface. dsv3 has no transport of its own.
//
// Buffers are typed by DType (F32, F64, BF16, I32, I64, U8); counts are elements. Collectives are
// called by every rank in the same order. Non-blocking calls return a Request; the buffers stay
// untouched by the caller until wait() returns.
//
// Faults: every wait (and so every blocking call) gives up after timeout_s() (environment
// DSV3_COMM_TIMEOUT_S, default 600 s) and ends the whole job with an error naming the operation
// and the rank, so a dead or hung peer never hangs the job forever; a rank that dies is detected
// by the MPI runtime, which ends the job.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.hpp"

namespace dsv3::dist {

enum class ReduceOp { Sum, Max, Min };

class Request {
 public:
  virtual ~Request() = default;
  virtual void wait() = 0;  // blocks (up to the timeout) until the operation completes
  virtual bool test() = 0;  // true once complete; drives progress of the transport
};
using RequestPtr = std::unique_ptr<Request>;

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single" or "mpi"

  // Every rank has arrived (blocking: barrier()).
  virtual RequestPtr ibarrier() = 0;

  // A communicator of the ranks that pass the same color, ranked by key (ties by rank); every
  // rank calls it, in the same order as the other collectives. The data-parallel and
  // expert-parallel groups of training are splits of the world.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;

  // buf[n] = op over ranks of buf[n] (in place).
  virtual RequestPtr iall_reduce(void* buf, int64_t n, DType t, ReduceOp op) = 0;
  // recv[n] = op over ranks of block `rank()` of send[size() * n].
  virtual RequestPtr ireduce_scatter(const void* send, void* recv, int64_t n, DType t,
                                     ReduceOp op) = 0;
  // Reduce-scatter with uneven blocks: send holds sum(counts) elements on every rank, block r
  // being the counts[r] elements after the first r blocks; rank r receives the op over ranks of
  // its block in recv[counts[r]] (counts: size() entries, zeros allowed; recv may not overlap
  // send). ZeRO-1 reduces a bucket that straddles shard boundaries this way.
  virtual RequestPtr ireduce_scatter_v(const void* send, void* recv, const int64_t* counts, DType t,
                                       ReduceOp op) = 0;
  // recv[size() * n] = the send[n] of every rank, in rank order. send may be this rank's own
  // block of recv (recv + rank() * n): an in-place gather.
  virtual RequestPtr iall_gather(const void* send, void* recv, int64_t n, DType t) = 0;
  // Rank r sends send_counts[r'] elements from send + send_displs[r'] to every rank r', and
  // receives recv_counts[r'] elements from r' at recv + recv_displs[r'] (arrays of size()).
  virtual RequestPtr iall_to_all_v(const void* send, const int64_t* send_counts,
                                   const int64_t* send_displs, void* recv,
                                   const int64_t* recv_counts, const int64_t* recv_displs,
                                   DType t) = 0;
  virtual RequestPtr isend(const void* buf, int64_t n, DType t, int dst, int tag) = 0;
  virtual RequestPtr irecv(void* buf, int64_t n, DType t, int src, int tag) = 0;

  // Blocking forms: the non-blocking call, then wait().
  void barrier() { ibarrier()->wait(); }
  void all_reduce(void* buf, int64_t n, DType t, ReduceOp op) {
    iall_reduce(buf, n, t, op)->wait();
  }
  void reduce_scatter(const void* send, void* recv, int64_t n, DType t, ReduceOp op) {
    ireduce_scatter(send, recv, n, t, op)->wait();
  }
  void reduce_scatter_v(const void* send, void* recv, const int64_t* counts, DType t, ReduceOp op) {
    ireduce_scatter_v(send, recv, counts, t, op)->wait();
  }
  void all_gather(const void* send, void* recv, int64_t n, DType t) {
    iall_gather(send, recv, n, t)->wait();
  }
  void all_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                    void* recv, const int64_t* recv_counts, const int64_t* recv_displs, DType t) {
    iall_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, t)->wait();
  }
  void send(const void* buf, int64_t n, DType t, int dst, int tag) {
    isend(buf, n, t, dst, tag)->wait();
  }
  void recv(void* buf, int64_t n, DType t, int src, int tag) { irecv(buf, n, t, src, tag)->wait(); }

  // Seconds a wait may take before the job is ended (DSV3_COMM_TIMEOUT_S, default 600).
  static double timeout_s();
};

// Throws unless reductions are defined on t (F32, F64, I32, I64); `what` names the operation.
void check_reduce_dtype(DType t, const char* what);

// One process: collectives are copies (size() == 1); send/recv to self pair up by tag.
std::unique_ptr<Comm> make_single_comm();

// MPI_COMM_WORLD (initializes MPI once per process; finalized at exit). Throws dsv3::Error when
// dsv3 was built without MPI.
std::unique_ptr<Comm> make_mpi_comm();
bool mpi_built();  // dsv3 was built with MPI
// The process was started by an MPI launcher (mpirun / mpiexec / srun with PMI).
bool launched_by_mpi();

// Ends the whole job at once (MPI_Abort under MPI, exit otherwise): for an error on one rank
// that the others, waiting in a collective, would not see.
[[noreturn]] void abort_job(int code);

// The communicator to use: MPI when launched by an MPI launcher, one process otherwise.
std::unique_ptr<Comm> make_world_comm();

}  // namespace dsv3::dist
