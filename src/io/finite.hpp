// Refusing checkpoints with NaN or Inf weights: one pass over the mapped bytes of every float
// tensor when a model is loaded, so that a corrupt checkpoint fails with the tensor's name
// instead of printing `loss -nan` or generating garbage.
#pragma once
#include "io/safetensors.hpp"

namespace dsv3::io {

// Throws dsv3::Error naming the file, the tensor, the element index and its value when `t`
// holds NaN or Inf (e_score_correction_bias and FP8 `_scale_inv` included: every float tensor).
void check_finite(const TensorInfo& t);

// check_finite on every tensor of the store, in name order.
void check_finite(const TensorStore& st);

}  // namespace dsv3::io
