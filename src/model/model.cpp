// Model loading and the forward loop; see model.hpp. Reads top to bottom like the paper:
// embedding -> L x (x + MLA(norm(x)); x + FFN(norm(x))) -> norm -> head, then the MTP module.
#include "model/model.hpp"

#include <algorithm>
#include <filesystem>

#include "backend/cpu/ops.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"
#include "model/params.hpp"
#include "model/rope.hpp"

namespace dsv3::model {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Loads the tensors of one checkpoint into the weight structs, validating every shape.
class Loader {
 public:
  Loader(const io::TensorStore& s, cpu::Compute c, std::vector<std::vector<uint8_t>>& owned)
      : store_(s), compute_(c), owned_(owned) {}

  bool has(const std::string& n) const { return store_.find(n) != nullptr; }

  std::vector<float> vec(const std::string& n, int64_t size) {
    return io::read_f32(float_tensor(n, {size}));
  }

  std::vector<float> matrix(const std::string& n, int64_t rows, int64_t cols) {
    cpu::WeightView v = view(n, rows, cols);
    return cpu::dequantize(v);
  }

  cpu::WeightView view(const std::string& n, int64_t rows, int64_t cols) {
    const io::TensorInfo& t = store_.get(n, {rows, cols});
    cpu::WeightView v{t.dtype, rows, cols, t.data, nullptr};
    switch (t.dtype) {
      case DType::F32:
      case DType::BF16:
        return v;
      case DType::F8_E4M3: {
        const io::TensorInfo& s =
            store_.get(n + "_scale_inv", {ceil_div(rows, 128), ceil_div(cols, 128)});
        DSV3_CHECK(s.dtype == DType::F32, "{}: tensor '{}' has dtype {}, expected F32", s.file,
                   s.name, dtype_name(s.dtype));
        v.scale_inv = reinterpret_cast<const float*>(s.data);
        return v;
      }
      case DType::F16: {  // converted once to F32
        owned_.emplace_back(size_t(rows * cols) * 4);
        to_f32(reinterpret_cast<float*>(owned_.back().data()), t.data, t.dtype,
               size_t(rows * cols));
        v.dtype = DType::F32;
        v.data = owned_.back().data();
        return v;
      }
      default:
        DSV3_FAIL("{}: tensor '{}' has dtype {}, expected F32, BF16, F16 or F8_E4M3", t.file, n,
                  dtype_name(t.dtype));
    }
  }

  cpu::LinearWeight linear(const std::string& n, int64_t rows, int64_t cols) {
    return cpu::LinearWeight(view(n, rows, cols), compute_);
  }

  const io::TensorInfo& float_tensor(const std::string& n, const std::vector<int64_t>& shape) {
    const io::TensorInfo& t = store_.get(n, shape);
    DSV3_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
               "{}: tensor '{}' has dtype {}, expected F32, BF16 or F16", t.file, n,
               dtype_name(t.dtype));
    return t;
  }

  void mlp(MlpWeights& w, const std::string& p, int64_t F, int64_t D) {
    w.gate = linear(p + "gate_proj.weight", F, D);
    w.up = linear(p + "up_proj.weight", F, D);
    w.down = linear(p + "down_proj.weight", D, F);
  }

  void layer(LayerWeights& lw, const ModelConfig& c, int64_t l, bool moe) {
    const std::string p = layer_prefix(l);
    const int64_t D = c.hidden_size, H = c.num_attention_heads, R = c.kv_lora_rank;
    const int64_t Dq = c.qk_head_dim(), Dkv = c.qk_nope_head_dim + c.v_head_dim;
    lw.attn_norm = vec(p + "input_layernorm.weight", D);
    lw.ffn_norm = vec(p + "post_attention_layernorm.weight", D);
    MlaWeights& a = lw.attn;
    if (c.q_lora_rank) {
      a.q_a = linear(p + "self_attn.q_a_proj.weight", *c.q_lora_rank, D);
      a.q_a_norm = vec(p + "self_attn.q_a_layernorm.weight", *c.q_lora_rank);
      a.q_b = linear(p + "self_attn.q_b_proj.weight", H * Dq, *c.q_lora_rank);
    } else {
      a.q = linear(p + "self_attn.q_proj.weight", H * Dq, D);
    }
    a.kv_a = linear(p + "self_attn.kv_a_proj_with_mqa.weight", R + c.qk_rope_head_dim, D);
    a.kv_a_norm = vec(p + "self_attn.kv_a_layernorm.weight", R);
    a.kv_b = linear(p + "self_attn.kv_b_proj.weight", H * Dkv, R);
    a.kv_b_f32 = cpu::dequantize(a.kv_b.view());
    a.o = linear(p + "self_attn.o_proj.weight", D, H * c.v_head_dim);
    lw.moe = moe;
    if (!moe) {
      mlp(lw.mlp, p + "mlp.", c.intermediate_size, D);
      return;
    }
    const int64_t E = c.n_routed_experts, F = c.moe_intermediate_size;
    lw.moe_w.router = matrix(p + "mlp.gate.weight", E, D);
    if (c.topk_method == TopkMethod::NoauxTc)
      lw.moe_w.bias = vec(p + "mlp.gate.e_score_correction_bias", E);
    lw.moe_w.experts.resize(size_t(E));
    for (int64_t e = 0; e < E; ++e)
      mlp(lw.moe_w.experts[size_t(e)], p + "mlp.experts." + std::to_string(e) + ".", F, D);
    if (c.n_shared_experts > 0)
      mlp(lw.moe_w.shared, p + "mlp.shared_experts.", F * c.n_shared_experts, D);
  }

 private:
  const io::TensorStore& store_;
  cpu::Compute compute_;
  std::vector<std::vector<uint8_t>>& owned_;
};
}  // namespace

KVCache::KVCache(const ModelConfig& c, int64_t slots, int64_t max_seq, bool with_mtp)
    : slots_(slots), max_seq_(max_seq) {
  int64_t n = c.num_hidden_layers + (with_mtp ? c.num_nextn_predict_layers : 0);
  layers_.resize(size_t(n));
  for (auto& l : layers_) {
    l.slots = slots;
    l.max_seq = max_seq;
    l.latent.assign(size_t(slots * max_seq * c.kv_lora_rank), 0.0f);
    l.pe.assign(size_t(slots * max_seq * c.qk_rope_head_dim), 0.0f);
  }
}

size_t KVCache::bytes_per_token(const ModelConfig& c) {
  return size_t(c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim)) * sizeof(float);
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opt) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = load_config(dir);
  const ModelConfig& c = m->config_;
  m->compute_ = opt.compute;
  m->store_ = io::TensorStore::open_dir(dir, opt.residency);
  Loader ld(m->store_, opt.compute, m->owned_);
  const int64_t D = c.hidden_size, V = c.vocab_size;
  m->embed_ = ld.float_tensor("model.embed_tokens.weight", {V, D});
  m->layers_.resize(size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    ld.layer(m->layers_[size_t(l)], c, l, c.is_moe_layer(l));
  m->norm_ = ld.vec("model.norm.weight", D);
  m->lm_head_ = ld.linear("lm_head.weight", V, D);
  if (opt.load_mtp && c.num_nextn_predict_layers > 0) {
    const int64_t L = c.num_hidden_layers;
    if (!ld.has(layer_prefix(L) + "eh_proj.weight")) {
      log_warn(dir + ": config has num_nextn_predict_layers = " +
               std::to_string(c.num_nextn_predict_layers) +
               " but the checkpoint has no MTP layer; MTP disabled");
    } else {
      m->mtp_.resize(size_t(c.num_nextn_predict_layers));
      for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
        const std::string p = layer_prefix(L + k);
        MtpWeights& t = m->mtp_[size_t(k)];
        // The embedding and head are shared with the main model; the release stores copies.
        t.embed = ld.has(p + "embed_tokens.weight")
                      ? ld.float_tensor(p + "embed_tokens.weight", {V, D})
                      : m->embed_;
        t.enorm = ld.vec(p + "enorm.weight", D);
        t.hnorm = ld.vec(p + "hnorm.weight", D);
        t.eh_proj = ld.linear(p + "eh_proj.weight", D, 2 * D);
        ld.layer(t.layer, c, L + k, c.n_routed_experts > 0);
        t.head_norm = ld.vec(p + "shared_head.norm.weight", D);
        t.head = ld.has(p + "shared_head.head.weight")
                     ? ld.linear(p + "shared_head.head.weight", V, D)
                     : ld.linear("lm_head.weight", V, D);
      }
    }
  }
  m->cos_sin_ = rope_cos_sin(c, c.max_position_embeddings);
  return m;
}

void Model::embed(float* out, const io::TensorInfo& table, const int32_t* tokens, int64_t n) const {
  const int64_t D = config_.hidden_size, V = config_.vocab_size;
  const size_t row = size_t(D) * dtype_size(table.dtype);
  for (int64_t i = 0; i < n; ++i) {
    DSV3_CHECK(tokens[i] >= 0 && tokens[i] < V,
               "token id {} at position {} is outside the vocabulary [0, {})", tokens[i], i, V);
    to_f32(out + i * D, table.data + size_t(tokens[i]) * row, table.dtype, size_t(D));
  }
}

void Model::decoder_layer(float* h, int64_t B, int64_t T, int64_t start_pos, const LayerWeights& lw,
                          MlaCache& cache, const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  const int64_t N = B * T, D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  float* xn = grow(xn_, size_t(N * D));
  float* tmp = grow(tmp_, size_t(N * D));
  cpu::rmsnorm_forward(xn, nullptr, h, lw.attn_norm.data(), N, D, eps);
  auto t0 = Clock::now();
  mla_forward(tmp, xn, B, T, start_pos, lw.attn, c, cos_sin_.data(), cache, opt.attn, mla_s_);
  if (opt.times) opt.times->attention += seconds_since(t0);
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
  cpu::rmsnorm_forward(xn, nullptr, h, lw.ffn_norm.data(), N, D, eps);
  t0 = Clock::now();
  if (lw.moe) {
    moe_forward(tmp, xn, N, lw.moe_w, c, routing_, moe_s_);
    if (opt.routes) opt.routes->push_back(routing_);
  } else {
    mlp_forward(tmp, xn, N, lw.mlp, moe_s_);
  }
  if (opt.times) opt.times->ffn += seconds_since(t0);
  for (int64_t i = 0; i < N * D; ++i) h[i] += tmp[i];
}

void Model::forward(const int32_t* tokens, int64_t B, int64_t T, int64_t start_pos, KVCache& cache,
                    float* logits, const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  const int64_t N = B * T;
  DSV3_CHECK(B > 0 && T > 0, "empty batch ({} x {})", B, T);
  DSV3_CHECK(start_pos >= 0 && start_pos + T <= c.max_position_embeddings,
             "positions {}..{} exceed max_position_embeddings {}", start_pos, start_pos + T - 1,
             c.max_position_embeddings);
  // A decode step (GEMV products, the absorbed attention) is ~80 short parallel regions per
  // token: they go through one spin team instead of an OpenMP fork/join each.
  if (N <= kSpinTeamTokens && opt.attn != AttnImpl::Naive)
    spin_team([&] { forward_layers(tokens, B, T, start_pos, cache, logits, opt); });
  else
    forward_layers(tokens, B, T, start_pos, cache, logits, opt);
}

void Model::forward_layers(const int32_t* tokens, int64_t B, int64_t T, int64_t start_pos,
                           KVCache& cache, float* logits, const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  const int64_t N = B * T, D = c.hidden_size;
  const auto t_start = Clock::now();
  float* h = grow(h_, size_t(N * D));
  embed(h, embed_, tokens, N);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    decoder_layer(h, B, T, start_pos, layers_[size_t(l)], cache.layer(l), opt);
  const auto t_head = Clock::now();
  float* xn = grow(xn_, size_t(N * D));
  cpu::rmsnorm_forward(xn, nullptr, h, norm_.data(), N, D, float(c.rms_norm_eps));
  if (opt.final_hidden) std::copy(xn, xn + N * D, opt.final_hidden);
  if (opt.all_logits) {
    cpu::linear_forward(logits, xn, N, lm_head_);
  } else {
    float* last = grow(tmp_, size_t(B * D));
    for (int64_t b = 0; b < B; ++b)
      std::copy(xn + ((b + 1) * T - 1) * D, xn + (b + 1) * T * D, last + b * D);
    cpu::linear_forward(logits, last, B, lm_head_);
  }
  if (opt.times) {
    opt.times->head += seconds_since(t_head);
    opt.times->total += seconds_since(t_start);
  }
}

void Model::mtp_forward(const float* hidden, const int32_t* next, int64_t B, int64_t T,
                        int64_t start_pos, KVCache& cache, float* logits, const ForwardOptions& opt,
                        float* mtp_hidden) {
  DSV3_CHECK(has_mtp(), "this checkpoint has no MTP module");
  const ModelConfig& c = config_;
  const int64_t N = B * T, D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  const MtpWeights& m = mtp_[0];
  // cat[N, 2D] = [enorm(embed(t_{i+1})), hnorm(h_i)] (embedding first, as the implementations).
  std::vector<float> e(size_t(N * D)), cat(size_t(N * 2 * D));
  embed(e.data(), m.embed, next, N);
  cpu::rmsnorm_forward(cat.data(), nullptr, e.data(), m.enorm.data(), N, D, eps, D, 2 * D);
  cpu::rmsnorm_forward(cat.data() + D, nullptr, hidden, m.hnorm.data(), N, D, eps, D, 2 * D);
  std::vector<float> x(size_t(N * D));
  cpu::linear_forward(x.data(), cat.data(), N, m.eh_proj);
  decoder_layer(x.data(), B, T, start_pos, m.layer, cache.layer(c.num_hidden_layers), opt);
  if (mtp_hidden) std::copy(x.begin(), x.end(), mtp_hidden);
  float* xn = grow(xn_, size_t(N * D));
  cpu::rmsnorm_forward(xn, nullptr, x.data(), m.head_norm.data(), N, D, eps);
  cpu::linear_forward(logits, xn, N, m.head);
}

size_t Model::active_weight_bytes() const {
  const ModelConfig& c = config_;
  auto mlp_bytes = [](const MlpWeights& w) {
    return w.gate.stored_bytes() + w.up.stored_bytes() + w.down.stored_bytes();
  };
  size_t n = lm_head_.stored_bytes() + size_t(c.hidden_size) * dtype_size(embed_.dtype);
  for (const auto& l : layers_) {
    const auto& a = l.attn;
    if (c.q_lora_rank)
      n += a.q_a.stored_bytes() + a.q_b.stored_bytes();
    else
      n += a.q.stored_bytes();
    n += a.kv_a.stored_bytes() + a.kv_b.stored_bytes() + a.o.stored_bytes();
    if (!l.moe) {
      n += mlp_bytes(l.mlp);
      continue;
    }
    n += l.moe_w.router.size() * 4;
    if (c.n_shared_experts > 0) n += mlp_bytes(l.moe_w.shared);
    n += size_t(c.num_experts_per_tok) * mlp_bytes(l.moe_w.experts[0]);
  }
  return n;
}

size_t Model::total_weight_bytes() const {
  size_t n = 0;
  for (const auto& name : store_.names()) n += store_.find(name)->nbytes;
  return n;
}

}  // namespace dsv3::model
