// Implementation of sampler.hpp: the per-epoch offset and window permutation drawn from
// (seed, epoch), and the sampler state's JSON and checkpoint-tensor forms.
#include "train/sampler.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/checkpoint.hpp"

namespace dsv3::train {

using nlohmann::json;

json SamplerState::to_json() const {
  return {{"seed", seed}, {"epoch", epoch}, {"cursor", cursor}, {"batches", batches}};
}

SamplerState SamplerState::from_json(const json& j) {
  DSV3_CHECK(j.is_object() && j.contains("seed") && j.contains("epoch") && j.contains("cursor"),
             "sampler state: expected an object with seed, epoch and cursor, got {}", j.dump());
  SamplerState s;
  s.seed = j["seed"].get<uint64_t>();
  s.epoch = j["epoch"].get<int64_t>();
  s.cursor = j["cursor"].get<int64_t>();
  s.batches = j.value("batches", int64_t(0));
  return s;
}

std::array<int64_t, 4> SamplerState::to_array() const {
  return {int64_t(seed), epoch, cursor, batches};
}

SamplerState SamplerState::from_array(std::span<const int64_t> a) {
  DSV3_CHECK(a.size() == 4, "sampler state: expected 4 values, got {}", a.size());
  return {uint64_t(a[0]), a[1], a[2], a[3]};
}

BatchSampler::BatchSampler(std::span<const int32_t> tokens, int64_t batch, int64_t seq_len,
                           uint64_t seed, bool shuffle)
    : tokens_(tokens), batch_(batch), seq_len_(seq_len), shuffle_(shuffle) {
  DSV3_CHECK(batch > 0 && seq_len > 0, "sampler: batch {} and sequence length {} must be positive",
             batch, seq_len);
  DSV3_CHECK(int64_t(tokens.size()) >= seq_len + 1,
             "data too small: {} tokens cannot fill one sequence of {} + 1 tokens", tokens.size(),
             seq_len);
  state_.seed = seed;
  start_epoch();
}

int64_t BatchSampler::windows_in_epoch(int64_t epoch) const {
  int64_t n = int64_t(tokens_.size());
  int64_t off = 0;
  if (shuffle_) {
    uint64_t k[2] = {state_.seed, uint64_t(epoch)};
    off = int64_t(Rng(hash64(k, sizeof k)).below(uint64_t(std::min(seq_len_, n - seq_len_))));
  }
  return (n - 1 - off) / seq_len_;
}

void BatchSampler::start_epoch() {
  int64_t n = int64_t(tokens_.size());
  uint64_t k[2] = {state_.seed, uint64_t(state_.epoch)};
  Rng rng(hash64(k, sizeof k));
  offset_ = shuffle_ ? int64_t(rng.below(uint64_t(std::min(seq_len_, n - seq_len_)))) : 0;
  int64_t w = (n - 1 - offset_) / seq_len_;
  order_.resize(size_t(w));
  for (int64_t i = 0; i < w; ++i) order_[size_t(i)] = i;
  if (shuffle_)
    for (int64_t i = w - 1; i > 0; --i)
      std::swap(order_[size_t(i)], order_[rng.below(uint64_t(i + 1))]);
}

void BatchSampler::next(int32_t* out) {
  for (int64_t b = 0; b < batch_; ++b) {
    if (state_.cursor >= int64_t(order_.size())) {
      ++state_.epoch;
      state_.cursor = 0;
      start_epoch();
    }
    int64_t at = offset_ + order_[size_t(state_.cursor++)] * seq_len_;
    std::memcpy(out + b * (seq_len_ + 1), tokens_.data() + at, size_t(seq_len_ + 1) * 4);
  }
  ++state_.batches;
}

std::vector<int32_t> BatchSampler::next() {
  std::vector<int32_t> out(static_cast<size_t>(batch_ * (seq_len_ + 1)));
  next(out.data());
  return out;
}

void BatchSampler::set_state(const SamplerState& s) {
  DSV3_CHECK(s.seed == state_.seed,
             "sampler state was saved with seed {} but this run uses seed {}", s.seed, state_.seed);
  DSV3_CHECK(s.epoch >= 0 && s.cursor >= 0, "sampler state: negative epoch {} or cursor {}",
             s.epoch, s.cursor);
  state_ = s;
  start_epoch();
  DSV3_CHECK(s.cursor <= int64_t(order_.size()),
             "sampler state: cursor {} beyond the {} windows of epoch {} (different data?)",
             s.cursor, order_.size(), s.epoch);
}

}  // namespace dsv3::train
