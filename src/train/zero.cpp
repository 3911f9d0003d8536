// ZeRO-1 sharded AdamW; see zero.hpp.
#include "train/zero.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace dsv3::train {

namespace {
// The caller's ranges clipped to [b, e) and shifted to the shard's own offsets.
std::vector<ParamRange> clip_ranges(const std::vector<ParamRange>& ranges, int64_t b, int64_t e) {
  std::vector<ParamRange> out;
  for (const auto& r : ranges) {
    const int64_t lo = std::max(r.offset, b), hi = std::min(r.offset + r.size, e);
    if (lo < hi) out.push_back({lo - b, hi - lo, r.decay, r.train});
  }
  return out;
}
}  // namespace

int64_t ShardedAdamW::padded_size(int64_t n, int ranks) {
  return (n + ranks - 1) / ranks * ranks;
}

ShardedAdamW::ShardedAdamW(dist::Comm& comm, int64_t n, const AdamWConfig& config,
                           const std::vector<ParamRange>& ranges)
    : comm_(comm),
      n_(n),
      block_(padded_size(n, comm.size()) / comm.size()),
      begin_(std::min(n, block_ * comm.rank())),
      end_(std::min(n, block_ * (comm.rank() + 1))),
      opt_(end_ - begin_, config, clip_ranges(ranges, begin_, end_)) {}

int64_t ShardedAdamW::state_bytes() const {
  const int64_t per = opt_.moment_type() == MomentType::BF16 ? 2 : 4;
  return 2 * per * (end_ - begin_);
}

void ShardedAdamW::step(float* params, const float* shard_grads, float lr) {
  opt_.step(params + begin_, shard_grads, lr);
  // In place: this rank's block is already where the gather puts it.
  comm_.all_gather(params + block_ * comm_.rank(), params, block_, DType::F32);
}

}  // namespace dsv3::train
