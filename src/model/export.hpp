// Writing checkpoints in the released Hugging Face layout (config.json + model.safetensors, or
// shards with model.safetensors.index.json): BF16 / F32, or FP8 e4m3 with 128×128 block scales
// for the decoder `*_proj` weights as the DeepSeek-V3 release stores them.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "core/dtype.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace dsv3::model {

// fill(spec, dst) writes the FP32 values of one parameter (numel of spec.shape floats).
using ParamFill = std::function<void(const ParamSpec& spec, float* dst)>;

struct ExportOptions {
  DType dtype = DType::BF16;            // BF16, F32 or F8_E4M3
  int64_t max_shard_bytes = 5ll << 30;  // larger checkpoints are sharded
};

void save_hf_checkpoint(const std::string& dir, const ModelConfig& c, const ParamFill& fill,
                        const ExportOptions& opt = {});

// The random initialization of `dsv3 init`: linear weights N(0, (g/√fan_in)²) with g = 1
// (0.3 for o_proj/down_proj, which feed the residual stream), embeddings and heads N(0, 0.1²)...
// see export.cpp; each tensor seeded from (seed, name) so values do not depend on order.
void random_param_fill(const ParamSpec& spec, float* dst, uint64_t seed);

}  // namespace dsv3::model
