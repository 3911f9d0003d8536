// ZeRO-1 (the optimizer state sharded across data-parallel ranks, DeepSeek-V3 report §3.2):
// every rank keeps the full FP32 parameters, but the AdamW moments only of its own contiguous
// shard of the flat arena, updates that shard from the shard's reduced gradient (dist::GradSync
// reduce-scatters the gradients into exactly these shards and clips them by the global norm), and
// the shards are all-gathered so every rank holds the new parameters: the result equals one AdamW
// over the whole arena.
//
// Shards: the arena's n elements split into P blocks of ceil(n / P) (the last ones shorter or
// empty); the all-gather runs on that padded size, so the caller's arenas hold P·ceil(n/P).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "dist/comm.hpp"
#include "train/optimizer.hpp"

namespace dsv3::train {

class ShardedAdamW {
 public:
  // n parameters with the caller's decay/train ranges (as AdamW takes them, whole-arena offsets).
  ShardedAdamW(dist::Comm& comm, int64_t n, const AdamWConfig& config,
               const std::vector<ParamRange>& ranges);

  // Arena length the parameters must have room for (the all-gather writes whole blocks).
  static int64_t padded_size(int64_t n, int ranks);
  int64_t shard_begin() const { return begin_; }
  int64_t shard_end() const { return end_; }
  // Bytes of optimizer state this rank holds (its shard's two moments).
  int64_t state_bytes() const;

  // AdamW on this rank's shard of params from shard_grads (the reduced, clipped gradient of
  // elements [shard_begin(), shard_end()) only), then every rank receives every shard. params
  // has padded_size(n, ranks) elements.
  void step(float* params, const float* shard_grads, float lr);

  const AdamW& shard() const { return opt_; }
  AdamW& shard() { return opt_; }  // its state tensors (checkpoints)

 private:
  dist::Comm& comm_;
  int64_t n_, block_, begin_, end_;
  AdamW opt_;
};

}  // namespace dsv3::train
