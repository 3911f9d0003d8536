// The parameter table: every tensor of a DeepSeek-V2/V3 checkpoint under its Hugging Face name,
// with shape and role. Loading, saving, initialization and (later) the training arenas are all
// driven by this one list.
#pragma once
#include <string>
#include <vector>

#include "model/config.hpp"

namespace dsv3::model {

enum class ParamRole { Linear, Norm, Embedding, Head, Router, RouterBias };

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  ParamRole role;
  // Stored as F8_E4M3 + `<name>_scale_inv` in FP8 checkpoints (the `*_proj` weights of decoder
  // layers, as in the DeepSeek-V3 release).
  bool fp8 = false;
  // Linear layers whose output is added to the residual stream (o_proj, down_proj) get a
  // smaller initialization.
  bool residual_out = false;
  // Belongs to the MTP module (layer index >= num_hidden_layers).
  bool mtp = false;
};

std::vector<ParamSpec> param_table(const ModelConfig& c);
std::string layer_prefix(int64_t layer);  // "model.layers.{layer}."

}  // namespace dsv3::model
