// Decoupled RoPE frequencies with YaRN (DeepSeek-V2 §2.1.3 / HF DeepseekV3YarnRotaryEmbedding):
// inverse frequencies blended between interpolation (/factor) and extrapolation by a linear
// ramp between the correction dims of beta_fast and beta_slow.
#pragma once
#include <vector>

#include "model/config.hpp"

namespace dsv3::model {

// Inverse frequencies [rope_dim / 2] after YaRN.
std::vector<double> rope_inv_freq(const ModelConfig& c);
// cos/sin table [max_pos, rope_dim / 2, 2] (times HF's cos/sin mscale, 1 when mscale equals
// mscale_all_dim as in the releases).
std::vector<float> rope_cos_sin(const ModelConfig& c, int64_t max_pos);

}  // namespace dsv3::model
