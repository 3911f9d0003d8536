// The deterministic, resumable batch sampler of training: packs sequences of T+1 tokens out of
// the concatenated document stream (sequences span document boundaries, as in pretraining
// packing), in an order drawn from (seed, epoch), with a state small enough for a checkpoint.
// Rules: docs/training-runs.md.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

namespace dsv3::train {

// Position of a BatchSampler: everything needed to continue exactly where it stopped.
struct SamplerState {
  uint64_t seed = 0;
  int64_t epoch = 0;    // completed passes over the data
  int64_t cursor = 0;   // next window in this epoch's permutation
  int64_t batches = 0;  // batches drawn so far (informational)

  nlohmann::json to_json() const;
  static SamplerState from_json(const nlohmann::json& j);
  std::array<int64_t, 4> to_array() const;  // for an I64 checkpoint tensor
  static SamplerState from_array(std::span<const int64_t> a);
  bool operator==(const SamplerState&) const = default;
};

// Draws batches of `batch` sequences of seq_len + 1 tokens (inputs = [0, T), targets = [1, T+1)).
// Each epoch cuts the stream into windows of T+1 tokens starting at offset + i*T (the offset,
// in [0, T), and the window order are drawn from (seed, epoch)), so every token is a target once
// per epoch. With shuffle = false windows come in order from offset 0, every epoch alike (for
// evaluation). A batch that runs past the last window continues in the next epoch.
class BatchSampler {
 public:
  BatchSampler(std::span<const int32_t> tokens, int64_t batch, int64_t seq_len, uint64_t seed,
               bool shuffle = true);

  // Fills out[batch * (seq_len + 1)].
  void next(int32_t* out);
  std::vector<int32_t> next();

  const SamplerState& state() const { return state_; }
  // Throws if the state's seed differs from this sampler's or the cursor is out of range.
  void set_state(const SamplerState& s);

  int64_t windows_in_epoch(int64_t epoch) const;
  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }

 private:
  void start_epoch();
  std::span<const int32_t> tokens_;
  int64_t batch_, seq_len_;
  bool shuffle_;
  SamplerState state_;
  int64_t offset_ = 0;          // of the current epoch
  std::vector<int64_t> order_;  // window permutation of the current epoch
};

}  // namespace dsv3::train
