// Training parameters: one flat FP32 arena for every tensor of the parameter table
// (model/params.hpp), in table order, and a gradient arena of the same layout, so the optimizer,
// the all-reduce and checkpointing see flat buffers (DeepSeek-V3 report §3.3: FP32 master
// weights and gradients). Loads from and saves to the released Hugging Face layout.
// Weight decay and trainability per tensor: model::ParamEntry.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace dsv3::train {

// The table's arena layout lives with the table (model/params.hpp).
using model::ParamEntry;
using model::ParamLayout;

enum class InitScheme {
  // model::random_param_fill (what `dsv3 init` writes): linear N(0, (g/√fan_in)²), g = 1 (0.3
  // for o_proj/down_proj), router N(0, 1/fan_in), embedding N(0, 0.1²), head N(0, 1/D).
  FanIn,
  // Hugging Face's DeepseekV3PreTrainedModel._init_weights: every linear, router, embedding and
  // head N(0, initializer_range²).
  InitializerRange,
};

class ParamStore {
 public:
  ParamStore() = default;
  // Zero parameters and gradients; with an expert shard, only those routed experts (expert
  // parallelism: one rank's arena).
  explicit ParamStore(const model::ModelConfig& c, model::ExpertShard shard = {});

  // Reads config.json and every tensor of a checkpoint directory (F32, BF16, F16 or FP8
  // block-scaled, dequantized to FP32). MTP copies of the embedding/head missing from the
  // checkpoint are filled from the main ones.
  static ParamStore load(const std::string& dir);
  // Seeded random initialization (norm weights 1, routing bias 0); each tensor is seeded from
  // (seed, name), so values do not depend on the table order.
  void init_random(uint64_t seed, InitScheme scheme = InitScheme::FanIn);
  // config.json + model.safetensors (sharded past max_shard_bytes); dtype F32, BF16 or
  // F8_E4M3 (FP8 128x128 block-scaled *_proj weights, the rest BF16). Atomic writes.
  void save(const std::string& dir, DType dtype = DType::BF16,
            int64_t max_shard_bytes = 5ll << 30) const;

  const model::ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  const std::vector<ParamEntry>& entries() const { return layout_.entries(); }
  int64_t size() const { return layout_.total(); }

  float* params() { return params_.data(); }
  const float* params() const { return params_.data(); }
  float* grads() { return grads_.data(); }
  const float* grads() const { return grads_.data(); }
  float* param(const std::string& name) { return params_.data() + layout_.get(name).offset; }
  const float* param(const std::string& name) const {
    return params_.data() + layout_.get(name).offset;
  }
  float* grad(const std::string& name) { return grads_.data() + layout_.get(name).offset; }
  const float* grad(const std::string& name) const {
    return grads_.data() + layout_.get(name).offset;
  }
  void zero_grad();
  // Grows both arenas to at least n elements (zeros past the layout: ZeRO-1's all-gather writes
  // whole blocks).
  void pad_arenas(int64_t n);
  // Bytes of the parameter and gradient arenas.
  int64_t arena_bytes() const { return int64_t((params_.size() + grads_.size()) * sizeof(float)); }

 private:
  model::ModelConfig config_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
};

}  // namespace dsv3::train
