// The communicator (dist/comm.hpp) on every rank of the job: run by ctest as one process and
// under `mpirun --oversubscribe -np 2` and `-np 4`. Each collective is checked against values
// every rank can compute on its own (rank-dependent data, uneven all-to-all-v counts with zeros,
// a send/recv ring, non-blocking calls overlapped with work). Seeds are fixed and printed.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "comm_env.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "dist/comm.hpp"

using namespace dsv3;
using namespace dsv3::dist;

dsv3::dist::Comm* g_comm = nullptr;

namespace {

// The value rank r holds at index i: distinct per rank and index, exact in float.
float val(int r, int64_t i) {
  return float(r * 1000 + i % 997) * 0.5f;
}

TEST(Comm, AllReduceSumAndMax) {
  Comm& c = *g_comm;
  const int P = c.size(), me = c.rank();
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(65537)}) {
    std::vector<float> a(static_cast<size_t>(n)), m(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) a[size_t(i)] = m[size_t(i)] = val(me, i);
    c.all_reduce(a.data(), n, DType::F32, ReduceOp::Sum);
    c.all_reduce(m.data(), n, DType::F32, ReduceOp::Max);
    for (int64_t i = 0; i < n; ++i) {
      float want = 0;
      for (int r = 0; r < P; ++r) want += val(r, i);
      ASSERT_EQ(a[size_t(i)], want) << "n " << n << " i " << i;
      ASSERT_EQ(m[size_t(i)], val(P - 1, i));
    }
  }
  std::vector<int64_t> cnt = {int64_t(me) + 1, int64_t(1) << 40};
  c.all_reduce(cnt.data(), 2, DType::I64, ReduceOp::Sum);
  EXPECT_EQ(cnt[0], int64_t(P) * (P + 1) / 2);
  EXPECT_EQ(cnt[1], int64_t(P) << 40);
}

TEST(Comm, ReduceScatterAndAllGather) {
  Comm& c = *g_comm;
  const int P = c.size(), me = c.rank();
  const int64_t n = 333;
  std::vector<double> send(size_t(n * P)), recv(static_cast<size_t>(n));
  for (int64_t i = 0; i < n * P; ++i) send[size_t(i)] = double(val(me, i));
  c.reduce_scatter(send.data(), recv.data(), n, DType::F64, ReduceOp::Sum);
  for (int64_t i = 0; i < n; ++i) {
    double want = 0;
    for (int r = 0; r < P; ++r) want += double(val(r, me * n + i));
    ASSERT_EQ(recv[size_t(i)], want) << i;
  }
  std::vector<float> mine(static_cast<size_t>(n)), all(size_t(n * P));
  for (int64_t i = 0; i < n; ++i) mine[size_t(i)] = val(me, i);
  c.all_gather(mine.data(), all.data(), n, DType::F32);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(all[size_t(r * n + i)], val(r, i));
}

// Uneven reduce-scatter blocks, zeros included (as a ZeRO-1 bucket that straddles shards).
TEST(Comm, ReduceScatterV) {
  Comm& c = *g_comm;
  const int P = c.size(), me = c.rank();
  std::vector<int64_t> counts(static_cast<size_t>(P));
  int64_t total = 0, mine_at = 0;
  for (int r = 0; r < P; ++r) {
    counts[size_t(r)] = r % 2 == 1 ? 0 : 17 * (r + 1);
    if (r < me) mine_at += counts[size_t(r)];
    total += counts[size_t(r)];
  }
  std::vector<float> send(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) send[size_t(i)] = val(me, i);
  std::vector<float> recv(static_cast<size_t>(counts[size_t(me)] + 1), -1.0f);
  c.reduce_scatter_v(send.data(), recv.data(), counts.data(), DType::F32, ReduceOp::Sum);
  for (int64_t i = 0; i < counts[size_t(me)]; ++i) {
    float want = 0;
    for (int r = 0; r < P; ++r) want += val(r, mine_at + i);
    ASSERT_EQ(recv[size_t(i)], want) << i;
  }
  EXPECT_EQ(recv.back(), -1.0f);  // nothing written past the block
  std::vector<uint8_t> u(4);
  std::vector<int64_t> ones(static_cast<size_t>(P), 1);
  EXPECT_THROW(c.reduce_scatter_v(u.data(), u.data(), ones.data(), DType::U8, ReduceOp::Sum),
               Error);
}

// Every collective's non-blocking form, several in flight at once (each on its own buffers),
// completed in an order other than the one they started in.
TEST(Comm, NonBlockingCollectivesInFlightTogether) {
  Comm& c = *g_comm;
  const int P = c.size(), me = c.rank();
  const int64_t n = 257;
  std::vector<float> ar(static_cast<size_t>(n), float(me + 1));
  std::vector<float> rs_send(size_t(n * P)), rs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n * P; ++i) rs_send[size_t(i)] = val(me, i);
  std::vector<int32_t> ag(size_t(n * P), -1);
  for (int64_t i = 0; i < n; ++i) ag[size_t(me * n + i)] = int32_t(me * 100000 + i);
  const size_t np = static_cast<size_t>(P);
  std::vector<int64_t> cnt(np, 3), displ(np);
  for (int r = 0; r < P; ++r) displ[size_t(r)] = 3 * r;
  std::vector<int64_t> a2a_send(np * 3), a2a_recv(np * 3, -1);
  for (int r = 0; r < P; ++r)
    for (int k = 0; k < 3; ++k) a2a_send[size_t(3 * r + k)] = me * 100 + r * 10 + k;
  auto r1 = c.iall_reduce(ar.data(), n, DType::F32, ReduceOp::Sum);
  auto r2 = c.ireduce_scatter(rs_send.data(), rs.data(), n, DType::F32, ReduceOp::Sum);
  auto r3 = c.iall_gather(ag.data() + me * n, ag.data(), n, DType::I32);  // in place
  auto r4 = c.iall_to_all_v(a2a_send.data(), cnt.data(), displ.data(), a2a_recv.data(), cnt.data(),
                            displ.data(), DType::I64);
  auto r5 = c.ibarrier();
  r5->test();
  r5->wait();
  EXPECT_TRUE(r5->test());
  r4->wait();
  r3->wait();
  r2->wait();
  r1->wait();
  EXPECT_EQ(ar[0], float(P * (P + 1) / 2));
  for (int64_t i = 0; i < n; ++i) {
    float want = 0;
    for (int r = 0; r < P; ++r) want += val(r, me * n + i);
    ASSERT_EQ(rs[size_t(i)], want) << i;
  }
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(ag[size_t(r * n + i)], int32_t(r * 100000 + i));
  for (int r = 0; r < P; ++r)
    for (int k = 0; k < 3; ++k) ASSERT_EQ(a2a_recv[size_t(3 * r + k)], r * 100 + me * 10 + k);
}

// Uneven counts, zeros included: rank s sends (s + 2d) % 3 * 5 elements to rank d.
TEST(Comm, AllToAllV) {
  Comm& c = *g_comm;
  const int P = c.size(), me = c.rank();
  auto cnt = [](int s, int d) { return int64_t((s + 2 * d) % 3 * 5); };
  const size_t np = static_cast<size_t>(P);
  std::vector<int64_t> sc(np), sd(np), rc(np), rd(np);
  int64_t st = 0, rt = 0;
  for (int r = 0; r < P; ++r) {
    sc[size_t(r)] = cnt(me, r);
    sd[size_t(r)] = st;
    st += sc[size_t(r)];
    rc[size_t(r)] = cnt(r, me);
    rd[size_t(r)] = rt;
    rt += rc[size_t(r)];
  }
  std::vector<int32_t> send(static_cast<size_t>(st)), recv(static_cast<size_t>(rt), -1);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < sc[size_t(r)]; ++i)
      send[size_t(sd[size_t(r)] + i)] = int32_t(me * 10000 + r * 100 + i);
  c.all_to_all_v(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), DType::I32);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < rc[size_t(r)]; ++i)
      ASSERT_EQ(recv[size_t(rd[size_t(r)] + i)], int32_t(r * 10000 + me * 100 + i));
}

// Each rank sends to the next and receives from the previous; non-blocking, posted receive first,
// with work done while the messages travel.
TEST(Comm, RingSendRecvNonBlocking) {
  Comm& c = *g_comm;
  const int P = c.size(), me = c.rank();
  const int next = (me + 1) % P, prev = (me + P - 1) % P;
  const uint64_t seed = 77;
  std::printf("[comm] seed %llu\n", (unsigned long long)seed);
  std::vector<uint16_t> out(4099), in(4099);
  Rng rng(seed + uint64_t(me));
  for (auto& v : out) v = uint16_t(rng.below(65536));
  auto rr = c.irecv(in.data(), int64_t(in.size()), DType::BF16, prev, 5);
  auto rs = c.isend(out.data(), int64_t(out.size()), DType::BF16, next, 5);
  double work = 0;
  for (int i = 0; i < 100000; ++i) work += double(i % 7);
  rs->wait();
  rr->wait();
  EXPECT_GT(work, 0);
  Rng expect(seed + uint64_t(prev));
  for (size_t i = 0; i < in.size(); ++i) ASSERT_EQ(in[i], uint16_t(expect.below(65536))) << i;
  // A non-blocking all-reduce overlapped with a blocking one on another buffer.
  std::vector<float> a(1024, float(me)), b(1024, 1.0f);
  auto ra = c.iall_reduce(a.data(), 1024, DType::F32, ReduceOp::Sum);
  c.all_reduce(b.data(), 1024, DType::F32, ReduceOp::Sum);
  ra->wait();
  EXPECT_EQ(a[1023], float(P * (P - 1) / 2));
  EXPECT_EQ(b[0], float(P));
  c.barrier();
}

TEST(Comm, BadArgumentsAreErrors) {
  Comm& c = *g_comm;
  std::vector<float> x(4);
  EXPECT_THROW(c.isend(x.data(), 4, DType::F32, c.size(), 0), Error);
  EXPECT_THROW(c.irecv(x.data(), 4, DType::F32, -1, 0), Error);
  std::vector<uint8_t> u(4);
  EXPECT_THROW(c.all_reduce(u.data(), 4, DType::U8, ReduceOp::Sum), Error);
}

}  // namespace

// `--fault die|hang`: rank 1 exits or stops answering before an all-reduce the others wait in;
// the job must end (the ctest fault cases check how).
int fault(Comm& c, const char* kind) {
  std::vector<float> x(16, 1.0f);
  if (c.rank() == 1) {
    if (std::strcmp(kind, "die") == 0) _exit(7);
    std::this_thread::sleep_for(std::chrono::seconds(120));
  }
  c.all_reduce(x.data(), 16, DType::F32, ReduceOp::Sum);
  std::printf("[comm] rank %d: all_reduce returned although rank 1 is gone\n", c.rank());
  return 0;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = make_world_comm();
  if (argc == 3 && std::strcmp(argv[1], "--fault") == 0) return fault(*comm, argv[2]);
  g_comm = comm.get();
  std::printf("[comm] backend %s, rank %d of %d\n", comm->backend().c_str(), comm->rank(),
              comm->size());
  // Only rank 0 prints the per-test lines; every rank's failures still print.
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  // Every rank must agree: one rank's failure fails the job.
  int64_t bad = rc != 0;
  comm->all_reduce(&bad, 1, DType::I64, ReduceOp::Sum);
  return bad ? 1 : 0;
}
