// Expert-parallel dispatch and combine; see expert_dispatch.hpp.
#include "dist/expert_dispatch.hpp"

#include <algorithm>
#include <cstring>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/quant.hpp"

namespace dsv3::dist {

namespace {

std::vector<int64_t> prefix(const std::vector<int64_t>& counts, int64_t scale = 1) {
  std::vector<int64_t> d(counts.size());
  int64_t at = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    d[i] = at;
    at += counts[i] * scale;
  }
  return d;
}

std::vector<int64_t> scaled(const std::vector<int64_t>& counts, int64_t scale) {
  std::vector<int64_t> s(counts);
  for (auto& v : s) v *= scale;
  return s;
}

// Rows of width w: `from` (counts a, as sent by the plan's forward direction when forward) to
// `to` (counts b), both sides scaled by w.
template <typename T>
void exchange(Comm& comm, const T* send, const std::vector<int64_t>& scount, T* recv,
              const std::vector<int64_t>& rcount, int64_t w, DType t) {
  const auto sc = scaled(scount, w), rc = scaled(rcount, w);
  const auto sd = prefix(sc), rd = prefix(rc);
  comm.all_to_all_v(send, sc.data(), sd.data(), recv, rc.data(), rd.data(), t);
}

constexpr int64_t kWireTile = 128;  // FP8: one scale per 1×128 tile (per row, per 128 channels)

int64_t wire_tiles(int64_t D) {
  return (D + kWireTile - 1) / kWireTile;
}

}  // namespace

const char* wire_name(Wire w) {
  switch (w) {
    case Wire::F32:
      return "fp32";
    case Wire::BF16:
      return "bf16";
    case Wire::FP8:
      return "fp8";
  }
  return "?";
}

int64_t wire_row_bytes(Wire w, int64_t D) {
  switch (w) {
    case Wire::F32:
      return D * 4;
    case Wire::BF16:
      return D * 2;
    case Wire::FP8:
      return D + wire_tiles(D) * 4;
  }
  DSV3_FAIL("wire_row_bytes: unknown wire format {}", int(w));
}

void exchange_rows(Comm& comm, const float* send, const std::vector<int64_t>& scount, float* recv,
                   const std::vector<int64_t>& rcount, int64_t D, Wire w) {
  int64_t ns = 0, nr = 0;
  for (auto c : scount) ns += c;
  for (auto c : rcount) nr += c;
  if (w == Wire::F32) {
    exchange(comm, send, scount, recv, rcount, D, DType::F32);
  } else if (w == Wire::BF16) {
    std::vector<uint16_t> s(size_t(ns * D)), r(size_t(nr * D));
    parallel_for(ns * D, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) s[size_t(i)] = f32_to_bf16(send[i]);
    });
    exchange(comm, s.data(), scount, r.data(), rcount, D, DType::BF16);
    parallel_for(nr * D, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) recv[i] = bf16_to_f32(r[size_t(i)]);
    });
  } else {
    DSV3_CHECK(w == Wire::FP8, "exchange_rows: unknown wire format {}", int(w));
    // One message row: the D codes, then the row's FP32 scales (bytes, unaligned).
    const int64_t T = wire_tiles(D), W = wire_row_bytes(w, D);
    std::vector<uint8_t> codes(size_t(ns * D)), s(size_t(ns * W)), r(size_t(nr * W));
    std::vector<float> scale(size_t(ns * T));
    fp8_act_quantize(codes.data(), scale.data(), send, ns, D, kWireTile);
    parallel_for(ns, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        std::memcpy(s.data() + i * W, codes.data() + i * D, size_t(D));
        std::memcpy(s.data() + i * W + D, scale.data() + i * T, size_t(T * 4));
      }
    });
    exchange(comm, s.data(), scount, r.data(), rcount, W, DType::U8);
    const float* table = fp8_e4m3_table();
    parallel_for(nr, [&](int64_t b, int64_t e) {
      std::vector<float> sc(static_cast<size_t>(T));
      for (int64_t i = b; i < e; ++i) {
        const uint8_t* row = r.data() + i * W;
        std::memcpy(sc.data(), row + D, size_t(T * 4));
        float* o = recv + i * D;
        for (int64_t j = 0; j < D; ++j) o[j] = table[row[j]] * sc[size_t(j / kWireTile)];
      }
    });
  }
}

void DispatchStats::add(const ExpertPlan& plan, int rank) {
  if (rows_to.size() < size_t(plan.P)) rows_to.resize(size_t(plan.P), 0);
  const int64_t row_bytes = wire_row_bytes(plan.wire.to_experts, plan.D);
  const int64_t back_bytes = wire_row_bytes(plan.wire.from_experts, plan.D);
  const int rpn = std::max(1, ranks_per_node);
  tokens += plan.N;
  wire = plan.wire;
  for (int64_t r = 0; r < plan.P; ++r) {
    const int64_t n = plan.send_counts[size_t(r)];
    rows_to[size_t(r)] += n;
    if (r != rank) {
      remote_rows += n;
      remote_bytes += n * row_bytes;
      remote_combine_bytes += n * back_bytes;
    }
    if (r / rpn != rank / rpn) {
      cross_node_rows += n;
      cross_node_bytes += n * row_bytes;
    }
  }
}

void expert_dispatch(Comm& comm, ExpertPlan& p, std::vector<float>& xr, const float* x,
                     const int32_t* indices, const float* weights, int64_t N, int64_t K, int64_t D,
                     int64_t E, WireFormats wire) {
  const int64_t P = comm.size();
  DSV3_CHECK(E % P == 0, "expert parallelism: {} routed experts do not split over {} ranks", E, P);
  const int64_t per = E / P;
  p.N = N;
  p.K = K;
  p.D = D;
  p.E = E;
  p.P = P;
  p.wire = wire;
  p.idx.assign(indices, indices + N * K);
  // Each token once per rank that owns one of its experts, grouped by rank, in token order.
  p.send_counts.assign(size_t(P), 0);
  p.send_tok.clear();
  std::vector<int32_t> slot_e;
  std::vector<float> slot_w;
  for (int64_t d = 0; d < P; ++d)
    for (int64_t t = 0; t < N; ++t) {
      bool any = false;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = indices[t * K + k];
        DSV3_CHECK(e >= 0 && e < E, "expert dispatch: token {} chose expert {} of {}", t, e, E);
        any = any || e / per == d;
      }
      if (!any) continue;
      p.send_tok.push_back(int32_t(t));
      p.send_counts[size_t(d)]++;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = indices[t * K + k];
        const bool mine = e / per == d;
        slot_e.push_back(mine ? int32_t(e - d * per) : -1);
        slot_w.push_back(mine ? weights[t * K + k] : 0.0f);
      }
    }
  p.send_displs = prefix(p.send_counts);
  // Counts first: one element to every rank.
  p.recv_counts.assign(size_t(P), 0);
  std::vector<int64_t> ones(static_cast<size_t>(P), 1), seq(static_cast<size_t>(P));
  for (int64_t i = 0; i < P; ++i) seq[size_t(i)] = i;
  comm.all_to_all_v(p.send_counts.data(), ones.data(), seq.data(), p.recv_counts.data(),
                    ones.data(), seq.data(), DType::I64);
  p.recv_displs = prefix(p.recv_counts);
  p.R = 0;
  for (auto c : p.recv_counts) p.R += c;
  // Slots, then the hidden states.
  p.recv_expert.resize(size_t(p.R * K));
  p.recv_weight.resize(size_t(p.R * K));
  exchange(comm, slot_e.data(), p.send_counts, p.recv_expert.data(), p.recv_counts, K, DType::I32);
  exchange(comm, slot_w.data(), p.send_counts, p.recv_weight.data(), p.recv_counts, K, DType::F32);
  std::vector<float> xs(size_t(p.sent_rows() * D));
  for (int64_t i = 0; i < p.sent_rows(); ++i)
    std::copy_n(x + int64_t(p.send_tok[size_t(i)]) * D, D, xs.data() + i * D);
  xr.resize(size_t(p.R * D));
  exchange_rows(comm, xs.data(), p.send_counts, xr.data(), p.recv_counts, D, wire.to_experts);
}

void expert_combine(Comm& comm, const ExpertPlan& p, float* out, const float* yr) {
  const int64_t D = p.D;
  std::vector<float> back(size_t(p.sent_rows() * D));
  exchange_rows(comm, yr, p.recv_counts, back.data(), p.send_counts, D, p.wire.from_experts);
  // In row order, so each token's sum over ranks is deterministic (rank order).
  for (int64_t i = 0; i < p.sent_rows(); ++i) {
    float* o = out + int64_t(p.send_tok[size_t(i)]) * D;
    const float* b = back.data() + i * D;
    for (int64_t j = 0; j < D; ++j) o[j] += b[j];
  }
}

void expert_combine_backward(Comm& comm, const ExpertPlan& p, std::vector<float>& dyr,
                             const float* dout) {
  const int64_t D = p.D;
  std::vector<float> ds(size_t(p.sent_rows() * D));
  for (int64_t i = 0; i < p.sent_rows(); ++i)
    std::copy_n(dout + int64_t(p.send_tok[size_t(i)]) * D, D, ds.data() + i * D);
  dyr.resize(size_t(p.R * D));
  exchange_rows(comm, ds.data(), p.send_counts, dyr.data(), p.recv_counts, D, p.wire.to_experts);
}

void expert_dispatch_backward(Comm& comm, const ExpertPlan& p, float* dx, float* dweights,
                              const float* dxr, const float* dwr) {
  const int64_t D = p.D, K = p.K, per = p.experts_per_rank();
  std::vector<float> bx(size_t(p.sent_rows() * D)), bw(size_t(p.sent_rows() * K));
  exchange_rows(comm, dxr, p.recv_counts, bx.data(), p.send_counts, D, p.wire.from_experts);
  exchange(comm, dwr, p.recv_counts, bw.data(), p.send_counts, K, DType::F32);
  for (int64_t d = 0, i = 0; d < p.P; ++d)
    for (int64_t c = 0; c < p.send_counts[size_t(d)]; ++c, ++i) {
      const int64_t t = p.send_tok[size_t(i)];
      float* o = dx + t * D;
      const float* b = bx.data() + i * D;
      for (int64_t j = 0; j < D; ++j) o[j] += b[j];
      for (int64_t k = 0; k < K; ++k)
        if (p.idx[size_t(t * K + k)] / per == d) dweights[t * K + k] = bw[size_t(i * K + k)];
    }
}

}  // namespace dsv3::dist
