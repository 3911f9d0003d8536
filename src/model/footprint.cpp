// Memory estimates of footprint.hpp.
#include "model/footprint.hpp"

#include "model/params.hpp"

namespace dsv3::model {

double param_count(const ModelConfig& c) {
  double n = 0;
  for (const auto& s : param_table(c)) {
    double e = 1;
    for (int64_t d : s.shape) e *= double(d);
    n += e;
  }
  return n;
}

double checkpoint_memory_bytes(const ModelConfig& c, DType dtype) {
  return param_count(c) * double(dtype_size(dtype));
}

double train_memory_bytes(const ModelConfig& c, int64_t batch, int64_t seq_len, int moment_bytes) {
  const double tokens = double(batch) * double(seq_len);
  const double weights = param_count(c) * (4.0 + 4.0 + 2.0 * moment_bytes);
  const double residual = tokens * double(c.hidden_size) * 4.0 * double(c.num_hidden_layers);
  const double logits = tokens * double(c.vocab_size) * 4.0 * 2.0;
  return weights + residual + logits;
}

double generate_memory_bytes(const ModelConfig& c, int64_t batch, int64_t seq,
                             double bytes_per_param) {
  const double rope = double(c.max_position_embeddings) * double(c.qk_rope_head_dim) * 4.0;
  const double kv = double(batch) * double(seq) * double(c.num_hidden_layers) *
                    double(c.kv_lora_rank + c.qk_rope_head_dim) * 4.0;
  const double logits = double(batch) * double(c.vocab_size) * 4.0;
  return param_count(c) * bytes_per_param + rope + kv + logits;
}

}  // namespace dsv3::model
