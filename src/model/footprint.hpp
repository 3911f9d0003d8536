// Memory a model needs, computed from its config before anything is allocated, so that an
// impossible size (hidden_size 1e12, --batch 1e9) is refused with a message instead of ending in
// std::bad_alloc. All sizes are doubles: products of huge sizes must not wrap. The estimates are
// lower bounds (the buffers that scale with the request), so a refusal is always right.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.hpp"
#include "model/config.hpp"

namespace dsv3::model {

// Elements of every tensor of the parameter table (MTP modules included).
double param_count(const ModelConfig& c);

// A checkpoint of `c` written in `dtype` and held in memory until written (dsv3 init, export).
double checkpoint_memory_bytes(const ModelConfig& c, DType dtype);

// Training (moment_bytes = 2 or 4 per AdamW moment) or evaluation (moment_bytes = 0) of a batch
// of B windows of T tokens: FP32 weights and gradients, two moments, the residual stream of every
// layer and the FP32 logits with their gradient.
double train_memory_bytes(const ModelConfig& c, int64_t batch, int64_t seq_len, int moment_bytes);

// Generation of B sequences of up to S tokens with weights of `bytes_per_param`: weights, the
// RoPE table, the latent KV cache and the logits of every sequence.
double generate_memory_bytes(const ModelConfig& c, int64_t batch, int64_t seq,
                             double bytes_per_param);

}  // namespace dsv3::model
