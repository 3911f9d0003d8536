// The one-process communicator and the choice of communicator; see comm.hpp.
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <vector>

#include "core/error.hpp"
#include "dist/comm.hpp"

namespace dsv3::dist {

double Comm::timeout_s() {
  static const double t = [] {
    const char* e = std::getenv("DSV3_COMM_TIMEOUT_S");
    if (!e || !*e) return 600.0;
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    DSV3_CHECK(end && *end == '\0' && v > 0,
               "DSV3_COMM_TIMEOUT_S='{}' is not a positive number of seconds", e);
    return v;
  }();
  return t;
}

void check_reduce_dtype(DType t, const char* what) {
  DSV3_CHECK(t == DType::F32 || t == DType::F64 || t == DType::I32 || t == DType::I64,
             "{}: reductions need F32, F64, I32 or I64 buffers, got {}", what, dtype_name(t));
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

std::unique_ptr<Comm> make_world_comm() {
  return launched_by_mpi() ? make_mpi_comm() : make_single_comm();
}

namespace {

class Done : public Request {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SingleComm : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  RequestPtr ibarrier() override { return std::make_unique<Done>(); }
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SingleComm>(); }

  RequestPtr iall_reduce(void*, int64_t, DType t, ReduceOp) override {
    check_reduce_dtype(t, "all_reduce");
    return std::make_unique<Done>();
  }
  RequestPtr ireduce_scatter(const void* send, void* recv, int64_t n, DType t, ReduceOp) override {
    check_reduce_dtype(t, "reduce_scatter");
    copy(recv, send, n, t);
    return std::make_unique<Done>();
  }
  RequestPtr ireduce_scatter_v(const void* send, void* recv, const int64_t* counts, DType t,
                               ReduceOp) override {
    check_reduce_dtype(t, "reduce_scatter_v");
    DSV3_CHECK(counts[0] >= 0, "reduce_scatter_v: negative count {}", counts[0]);
    copy(recv, send, counts[0], t);
    return std::make_unique<Done>();
  }
  RequestPtr iall_gather(const void* send, void* recv, int64_t n, DType t) override {
    copy(recv, send, n, t);
    return std::make_unique<Done>();
  }
  RequestPtr iall_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                           void* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                           DType t) override {
    DSV3_CHECK(send_counts[0] == recv_counts[0],
               "all_to_all_v: rank 0 sends itself {} elements but expects {}", send_counts[0],
               recv_counts[0]);
    const size_t e = dtype_size(t);
    copy(static_cast<uint8_t*>(recv) + size_t(recv_displs[0]) * e,
         static_cast<const uint8_t*>(send) + size_t(send_displs[0]) * e, send_counts[0], t);
    return std::make_unique<Done>();
  }
  RequestPtr isend(const void* buf, int64_t n, DType t, int dst, int tag) override {
    DSV3_CHECK(dst == 0, "send to rank {} in a one-process job", dst);
    const auto* p = static_cast<const uint8_t*>(buf);
    queue_[tag].emplace_back(p, p + size_t(n) * dtype_size(t));
    return std::make_unique<Done>();
  }
  RequestPtr irecv(void* buf, int64_t n, DType t, int src, int tag) override;

 private:
  static void copy(void* dst, const void* src, int64_t n, DType t) {
    if (n > 0 && dst != src) std::memmove(dst, src, size_t(n) * dtype_size(t));
  }
  friend class SelfRecv;
  std::map<int, std::deque<std::vector<uint8_t>>> queue_;
};

// A receive from this process: complete once a send with its tag has been posted.
class SelfRecv : public Request {
 public:
  SelfRecv(SingleComm& c, void* buf, size_t bytes, int tag)
      : c_(c), buf_(buf), bytes_(bytes), tag_(tag) {}
  bool test() override {
    if (done_) return true;
    auto it = c_.queue_.find(tag_);
    if (it == c_.queue_.end() || it->second.empty()) return false;
    const std::vector<uint8_t>& m = it->second.front();
    DSV3_CHECK(m.size() == bytes_, "recv of {} bytes with tag {} matched a send of {} bytes",
               bytes_, tag_, m.size());
    std::memcpy(buf_, m.data(), bytes_);
    it->second.pop_front();
    done_ = true;
    return true;
  }
  void wait() override {
    DSV3_CHECK(test(), "recv with tag {} in a one-process job has no matching send (deadlock)",
               tag_);
  }

 private:
  SingleComm& c_;
  void* buf_;
  size_t bytes_;
  int tag_;
  bool done_ = false;
};

RequestPtr SingleComm::irecv(void* buf, int64_t n, DType t, int src, int tag) {
  DSV3_CHECK(src == 0, "recv from rank {} in a one-process job", src);
  return std::make_unique<SelfRecv>(*this, buf, size_t(n) * dtype_size(t), tag);
}

}  // namespace

std::unique_ptr<Comm> make_single_comm() {
  return std::make_unique<SingleComm>();
}

}  // namespace dsv3::dist
