// Parameter and gradient arenas; see params.hpp.
#include "train/params.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/quant.hpp"
#include "core/rng.hpp"
#include "io/finite.hpp"
#include "io/safetensors.hpp"
#include "model/export.hpp"

namespace dsv3::train {

ParamStore::ParamStore(const model::ModelConfig& c, model::ExpertShard shard)
    : config_(c), layout_(c, shard) {
  params_.assign(size_t(layout_.total()), 0.0f);
  grads_.assign(size_t(layout_.total()), 0.0f);
}

void ParamStore::pad_arenas(int64_t n) {
  if (n > int64_t(params_.size())) {
    params_.resize(size_t(n), 0.0f);
    grads_.resize(size_t(n), 0.0f);
  }
}

void ParamStore::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
}

ParamStore ParamStore::load(const std::string& dir) {
  ParamStore p(model::load_config(dir));
  auto store = io::TensorStore::open_dir(dir);
  io::check_finite(store);
  for (const auto& e : p.layout_.entries()) {
    float* dst = p.params_.data() + e.offset;
    // The MTP module shares the embedding and head; checkpoints may omit the copies.
    const std::string src = store.find(e.name) || e.fallback.empty() ? e.name : e.fallback;
    const io::TensorInfo& t = store.get(src, e.shape);
    if (t.dtype == DType::F8_E4M3) {
      const int64_t rows = e.shape[0], cols = e.shape[1];
      const io::TensorInfo& s =
          store.get(src + "_scale_inv", {(rows + 127) / 128, (cols + 127) / 128});
      DSV3_CHECK(s.dtype == DType::F32, "{}: tensor '{}' has dtype {}, expected F32", s.file,
                 s.name, dtype_name(s.dtype));
      auto scale = io::read_f32(s);
      fp8_block_dequantize(dst, t.data, scale.data(), rows, cols);
    } else {
      auto v = io::read_f32(t);
      std::copy(v.begin(), v.end(), dst);
    }
  }
  return p;
}

void ParamStore::init_random(uint64_t seed, InitScheme scheme) {
  for (const auto& e : layout_.entries()) {
    float* dst = params_.data() + e.offset;
    if (scheme == InitScheme::FanIn) {
      model::ParamSpec s{e.name, e.shape, e.role, e.fp8, e.residual_out, e.mtp, e.fallback};
      model::random_param_fill(s, dst, seed);
      continue;
    }
    Rng rng(seed ^ fnv1a(e.name));
    const double std = config_.initializer_range;
    switch (e.role) {
      case model::ParamRole::Norm:
        std::fill_n(dst, e.numel, 1.0f);
        break;
      case model::ParamRole::RouterBias:
        std::fill_n(dst, e.numel, 0.0f);
        break;
      default:
        for (int64_t i = 0; i < e.numel; ++i) dst[i] = float(rng.normal() * std);
    }
  }
}

void ParamStore::save(const std::string& dir, DType dtype, int64_t max_shard_bytes) const {
  model::ExportOptions o;
  o.dtype = dtype;
  o.max_shard_bytes = max_shard_bytes;
  model::save_hf_checkpoint(
      dir, config_,
      [&](const model::ParamSpec& s, float* dst) {
        const ParamEntry& e = layout_.get(s.name);
        std::copy_n(params_.data() + e.offset, e.numel, dst);
      },
      o);
}

}  // namespace dsv3::train
