// The model loops; see model.hpp. Each reads top to bottom like the paper: embedding ->
// L x (x + MLA(norm(x)); x + FFN(norm(x))) -> norm -> head, then the MTP modules; the training
// backward replays the same list in reverse (MTP depths D..1 first, their gradient on h^0 joins
// the main head's, then the layers L-1..0, then the embedding).
#include "model/model.hpp"

#include <algorithm>
#include <type_traits>

#include "backend/cpu/ops.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"
#include "model/rope.hpp"

namespace dsv3::model {

KVCache::KVCache(const ModelConfig& c, int64_t slots, int64_t max_seq, bool with_mtp)
    : slots_(slots), max_seq_(max_seq) {
  int64_t n = c.num_hidden_layers + (with_mtp ? c.num_nextn_predict_layers : 0);
  // The pages are touched only as sequences fill them, so a cache larger than the machine would
  // fail late, in the middle of serving: refuse it here.
  check_fits_in_memory(double(n) * double(slots) * double(max_seq) *
                           double(c.kv_lora_rank + c.qk_rope_head_dim) * sizeof(float),
                       "the latent KV cache");
  layers_.resize(size_t(n));
  for (auto& l : layers_) {
    l.slots = slots;
    l.max_seq = max_seq;
    l.latent = ZeroedArray<float>(size_t(slots * max_seq * c.kv_lora_rank));
    l.pe = ZeroedArray<float>(size_t(slots * max_seq * c.qk_rope_head_dim));
  }
}

size_t KVCache::bytes_per_token(const ModelConfig& c) {
  return size_t(c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim)) * sizeof(float);
}

// ---- Inference ----

std::unique_ptr<Model> Model::view(const ModelConfig& c, const ParamLayout& layout,
                                   const float* params, bool with_mtp, bool tie_mtp) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = c;
  m->w_ =
      bind_arena<W<float>>(c, layout, params, with_mtp ? c.num_nextn_predict_layers : 0, tie_mtp);
  m->arena_bytes_ = size_t(layout.total()) * sizeof(float);
  m->prepare();
  return m;
}

void Model::prepare() {
  const ModelConfig& c = config_;
  cos_sin_ = rope_cos_sin(c, c.max_position_embeddings);
}

std::span<const SeqSpan> Model::slot_spans(int64_t B, int64_t T, int64_t start_pos) {
  if (int64_t(slot_ids_.size()) < B) {
    slot_ids_.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) slot_ids_[size_t(b)] = int32_t(b);
  }
  spans_.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b) spans_[size_t(b)] = {start_pos, T, &slot_ids_[size_t(b)], 1};
  return spans_;
}

void Model::forward(const int32_t* tokens, int64_t B, int64_t T, int64_t start_pos, KVCache& cache,
                    float* logits, const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  DSV3_CHECK(B > 0 && T > 0, "empty batch ({} x {})", B, T);
  DSV3_CHECK(start_pos >= 0 && start_pos + T <= c.max_position_embeddings,
             "positions {}..{} exceed max_position_embeddings {}", start_pos, start_pos + T - 1,
             c.max_position_embeddings);
  DSV3_CHECK(B <= cache.slots(), "batch {} exceeds the KV cache's {} sequences", B, cache.slots());
  const auto seqs = slot_spans(B, T, start_pos);
  const int64_t* rows = nullptr;
  int64_t nrows = B * T;
  if (!opt.all_logits) {
    rows_.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) rows_[size_t(b)] = (b + 1) * T - 1;
    rows = rows_.data();
    nrows = B;
  }
  forward_batch(tokens, seqs, cache, logits, rows, nrows, opt);
}

namespace {

// Whether a forward of N tokens runs on a spin team: decode steps (Model::kSpinTeamTokens), and
// under Compute::BF16 batched decode steps of up to Model::kSpinTeamBatchTokens, whose products
// are the GEMV or the skinny GEMM (linear.cpp), parallel_for regions both, and whose MoE takes
// whole experts per thread (moe.cpp) as a decode step does. (Compute::F32's sgemm has OpenMP
// regions of its own, which would run on one thread inside the team.)
bool spin_team_tokens(int64_t N, cpu::Compute c, int64_t decode_tokens) {
  return N <= decode_tokens || (c == cpu::Compute::BF16 && N <= Model::kSpinTeamBatchTokens);
}

}  // namespace

void Model::forward_batch(const int32_t* tokens, std::span<const SeqSpan> seqs, KVCache& cache,
                          float* logits, const int64_t* rows, int64_t nrows,
                          const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  DSV3_CHECK(!seqs.empty(), "empty batch");
  int64_t N = 0;
  for (const SeqSpan& q : seqs) {
    DSV3_CHECK(q.len > 0 && q.start >= 0 && q.start + q.len <= c.max_position_embeddings,
               "positions {}..{} exceed max_position_embeddings {}", q.start, q.start + q.len - 1,
               c.max_position_embeddings);
    N += q.len;
  }
  for (int64_t r = 0; rows && r < nrows; ++r)
    DSV3_CHECK(rows[r] >= 0 && rows[r] < N, "logit row {} outside the batch's {} tokens", rows[r],
               N);
  // A decode step (GEMV products, the absorbed attention) is ~80 short parallel regions per
  // token: they go through one spin team instead of an OpenMP fork/join each.
  if (spin_team_tokens(N, compute_, kSpinTeamTokens) && opt.attn != AttnImpl::Naive)
    spin_team([&] { forward_layers(tokens, seqs, N, cache, logits, rows, nrows, opt); });
  else
    forward_layers(tokens, seqs, N, cache, logits, rows, nrows, opt);
}

void Model::forward_layers(const int32_t* tokens, std::span<const SeqSpan> seqs, int64_t N,
                           KVCache& cache, float* logits, const int64_t* rows, int64_t nrows,
                           const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size;
  const auto t_start = Clock::now();
  float* h = grow(h_, size_t(N * D));
  embedding_forward<float>(h, w_.embed, tokens, N);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    decoder_layer_cached(h, seqs, N, w_.layers[size_t(l)], c, cos_sin_.data(), cache.layer(l),
                         opt.attn, ds_, opt.times, opt.routes);
  const auto t_head = Clock::now();
  float* xn = grow(xn_, size_t(N * D));
  cpu::rmsnorm_forward(xn, static_cast<float*>(nullptr), h, w_.norm, N, D, float(c.rms_norm_eps));
  if (opt.final_hidden) std::copy(xn, xn + N * D, opt.final_hidden);
  if (opt.head && !rows) {
    cpu::linear_forward(logits, xn, N, w_.head);
  } else if (opt.head && nrows > 0) {
    float* last = grow(last_, size_t(nrows * D));
    for (int64_t r = 0; r < nrows; ++r) std::copy_n(xn + rows[r] * D, D, last + r * D);
    cpu::linear_forward(logits, last, nrows, w_.head);
  }
  if (opt.times) {
    opt.times->head += seconds_since(t_head);
    opt.times->total += seconds_since(t_start);
  }
}

void Model::mtp_forward(const float* hidden, const int32_t* next, int64_t B, int64_t T,
                        int64_t start_pos, KVCache& cache, float* logits, const ForwardOptions& opt,
                        float* mtp_hidden, int64_t depth) {
  DSV3_CHECK(B > 0 && T > 0, "empty batch ({} x {})", B, T);
  DSV3_CHECK(B <= cache.slots(), "batch {} exceeds the KV cache's {} sequences", B, cache.slots());
  mtp_forward_batch(hidden, next, slot_spans(B, T, start_pos), cache, logits, nullptr, B * T, opt,
                    mtp_hidden, depth);
}

void Model::mtp_forward_batch(const float* hidden, const int32_t* next,
                              std::span<const SeqSpan> seqs, KVCache& cache, float* logits,
                              const int64_t* rows, int64_t nrows, const ForwardOptions& opt,
                              float* mtp_hidden, int64_t depth) {
  DSV3_CHECK(has_mtp(), "this checkpoint has no MTP module");
  DSV3_CHECK(depth >= 0 && depth < int64_t(w_.mtp.size()),
             "MTP depth {} requested; the model has {} MTP module(s)", depth + 1, w_.mtp.size());
  DSV3_CHECK(config_.num_hidden_layers + depth < cache.layers(),
             "the KV cache has no layer for MTP module {} (made without MTP layers)", depth + 1);
  int64_t N = 0;
  for (const SeqSpan& q : seqs) N += q.len;
  auto run = [&] {
    mtp_forward_cached(logits, mtp_hidden, hidden, next, seqs, N, rows, nrows,
                       w_.mtp[size_t(depth)], config_, cos_sin_.data(),
                       cache.layer(config_.num_hidden_layers + depth), opt.attn, ms_, ds_,
                       opt.times, opt.routes);
  };
  // A draft step is as short as a decode step: the same spin team (see forward_batch).
  if (spin_team_tokens(N, compute_, kSpinTeamTokens) && opt.attn != AttnImpl::Naive)
    spin_team(run);
  else
    run();
}

double Model::cross_entropy(const int32_t* tokens, int64_t B, int64_t T, KVCache& cache,
                            int64_t* count) {
  const int64_t N = B * T, D = config_.hidden_size;
  DSV3_CHECK(T >= 2, "cross-entropy needs sequences of at least 2 tokens, got {}", T);
  ForwardOptions o;
  o.final_hidden = grow(hidden_, size_t(N * D));
  o.head = false;
  forward(tokens, B, T, 0, cache, nullptr, o);
  int32_t* tgt = grow(targets_, size_t(N));
  for (int64_t i = 0; i < N; ++i) tgt[i] = i % T + 1 < T ? tokens[i + 1] : -1;
  return head_cross_entropy<float>(nullptr, nullptr, hidden_.data(), w_.head, tgt, N, 1.0f, count,
                                   hs_);
}

size_t Model::active_weight_bytes(bool as_bf16) const {
  const ModelConfig& c = config_;
  auto sb = [as_bf16](const cpu::LinearWeight& w) {
    return as_bf16 ? size_t(w.out() * w.in()) * 2 : w.stored_bytes();
  };
  auto mlp_bytes = [&](const MlpW<W<float>>& w) { return sb(w.gate) + sb(w.up) + sb(w.down); };
  size_t n = sb(w_.head) + size_t(c.hidden_size) * dtype_size(w_.embed.dtype);
  for (const auto& l : w_.layers) {
    const auto& a = l.attn;
    if (c.q_lora_rank)
      n += sb(a.q_a) + sb(a.q_b);
    else
      n += sb(a.q);
    n += sb(a.kv_a) + sb(a.kv_b) + sb(a.o);
    if (!l.moe) {
      n += mlp_bytes(l.mlp);
      continue;
    }
    n += size_t(c.n_routed_experts * c.hidden_size) * sizeof(float);  // the router
    if (c.n_shared_experts > 0) n += mlp_bytes(l.moe_w.shared);
    n += size_t(c.num_experts_per_tok) * mlp_bytes(l.moe_w.experts[0]);
  }
  return n;
}

size_t Model::routed_expert_bytes() const {
  for (const auto& l : w_.layers)
    if (l.moe && !l.moe_w.experts.empty()) {
      const auto& e = l.moe_w.experts[0];
      return e.gate.stored_bytes() + e.up.stored_bytes() + e.down.stored_bytes();
    }
  return 0;
}

int64_t Model::moe_layers() const {
  int64_t n = 0;
  for (const auto& l : w_.layers) n += l.moe ? 1 : 0;
  return n;
}

size_t Model::total_weight_bytes() const {
  if (arena_bytes_) return arena_bytes_;
  size_t n = 0;
  for (const auto& name : store_.names()) n += store_.find(name)->nbytes;
  return n;
}

// ---- Training ----

template <typename S>
TrainModelT<S>::TrainModelT(const ModelConfig& c, const ParamLayout& layout, const S* params,
                            S* grads)
    : c_(c), layout_(&layout), params_(params), grads_(grads) {
  bind(true);
  // Each layer's tensors are contiguous in the arena (table order): its range is the span of
  // the entries named model.layers.{l}.*.
  layer_range_.assign(size_t(c_.num_hidden_layers + c_.num_nextn_predict_layers), {-1, -1});
  for (const auto& e : layout.entries()) {
    const std::string_view pre = "model.layers.";
    if (!std::string_view(e.name).starts_with(pre)) continue;
    const size_t l = size_t(std::stoll(e.name.substr(pre.size())));
    auto& r = layer_range_[l];
    const int64_t end = e.offset + (e.numel + 15) / 16 * 16;
    r.first = r.first < 0 ? e.offset : std::min(r.first, e.offset);
    r.second = std::max(r.second, end);
  }
  acts_.resize(size_t(c_.num_hidden_layers));
  mtp_acts_.resize(size_t(c_.num_nextn_predict_layers));
}

template <typename S>
void TrainModelT<S>::bind(bool tie) {
  w_ = bind_arena<W<S>>(c_, *layout_, params_, c_.num_nextn_predict_layers, tie);
  g_ = bind_arena<G<S>>(c_, *layout_, grads_, c_.num_nextn_predict_layers, tie);
  bound_tie_ = tie;
}

namespace {

// f(LinearWeight&) for every linear layer of the decoder layers and MTP modules (not the heads).
template <typename F>
void for_each_linear(ModelW<W<float>>& w, F&& f) {
  auto mlp = [&](MlpW<W<float>>& m) {
    for (cpu::LinearWeight* x : {&m.gate, &m.up, &m.down})
      if (x->out() > 0) f(*x);
  };
  auto layer = [&](LayerW<W<float>>& l) {
    MlaW<W<float>>& a = l.attn;
    for (cpu::LinearWeight* x : {&a.q_a, &a.q_b, &a.q, &a.kv_a, &a.kv_b, &a.o})
      if (x->out() > 0) f(*x);
    if (!l.moe) {
      mlp(l.mlp);
      return;
    }
    for (auto& e : l.moe_w.experts) mlp(e);
    mlp(l.moe_w.shared);
  };
  for (auto& l : w.layers) layer(l);
  for (auto& m : w.mtp) {
    if (m.eh_proj.out() > 0) f(m.eh_proj);
    layer(m.layer);
  }
}

}  // namespace

template <typename S>
void TrainModelT<S>::attach_lowp(cpu::Precision p) {
  if constexpr (std::is_same_v<S, float>) {
    std::vector<cpu::LinearWeight*> heads{&w_.head};
    for (auto& m : w_.mtp)
      if (m.head.out() > 0) heads.push_back(&m.head);
    if (p == cpu::Precision::F32) {
      for_each_linear(w_, [](cpu::LinearWeight& lw) { lw.set_lowp(nullptr); });
      for (cpu::LinearWeight* h : heads) h->set_lowp(nullptr);
      return;
    }
    size_t n = 0;
    for_each_linear(w_, [&](cpu::LinearWeight&) { ++n; });
    lowp_.resize(n);
    size_t i = 0;
    for_each_linear(w_, [&](cpu::LinearWeight& lw) {
      cpu::LowpWeight& q = lowp_[i++];
      q.refresh(static_cast<const float*>(lw.view().data), lw.out(), lw.in(), p);
      lw.set_lowp(&q);
    });
    // The output heads keep the precision of the report's BF16 baseline in both modes (§3.3.1:
    // the output head stays in its "original precision"): BF16 inputs, FP32 accumulation. A tied
    // MTP head shares the main head's copy.
    head_lowp_.resize(heads.size());
    for (size_t h = 0; h < heads.size(); ++h) {
      cpu::LinearWeight& lw = *heads[h];
      size_t same = h;
      for (size_t j = 0; j < h; ++j)
        if (heads[j]->view().data == lw.view().data) same = j;
      if (same == h)
        head_lowp_[h].refresh(static_cast<const float*>(lw.view().data), lw.out(), lw.in(),
                              cpu::Precision::BF16);
      lw.set_lowp(&head_lowp_[same]);
    }
  } else {
    DSV3_CHECK(p == cpu::Precision::F32, "training precision {} needs a float model",
               cpu::precision_name(p));
  }
}

template <typename S>
double TrainModelT<S>::balance(MoeActs<S>& a, int64_t B, int64_t T, const TrainOptions& o) {
  if (o.balance_alpha <= 0) {
    a.dscores.clear();
    return 0;
  }
  if constexpr (std::is_same_v<S, float>) {
    const int64_t E = c_.n_routed_experts, K = c_.num_experts_per_tok;
    a.dscores.assign(size_t(B * T * E), 0.0f);
    // Its gradient on the scores joins the gate-weight gradient in moe_backward.
    return balance_loss(a.scores.data(), a.indices.data(), B, T, E, K, float(o.balance_alpha),
                        a.dscores.data());
  } else {
    DSV3_FAIL("the sequence-wise balance loss is implemented for float models only");
  }
}

template <typename S>
double TrainModelT<S>::run(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o,
                           bool backward, StepStats* stats) {
  const int64_t N = B * T, D = c_.hidden_size, L = c_.num_hidden_layers;
  DSV3_CHECK(B > 0 && T >= 2,
             "a training batch needs B >= 1 sequences of T >= 2 tokens, got {} x {}", B, T);
  DSV3_CHECK(T <= c_.max_position_embeddings, "{} tokens exceed max_position_embeddings {}", T,
             c_.max_position_embeddings);
  const int64_t depth =
      o.mtp_lambda > 0 ? (o.mtp_depth > 0 ? o.mtp_depth : c_.num_nextn_predict_layers) : 0;
  DSV3_CHECK(depth <= c_.num_nextn_predict_layers,
             "MTP depth {} needs {} MTP layers; the config has num_nextn_predict_layers = {}",
             depth, depth, c_.num_nextn_predict_layers);
  DSV3_CHECK(o.mtp_lambda <= 0 || depth > 0,
             "mtp_lambda > 0 but the config has no MTP layer (num_nextn_predict_layers = 0)");
  DSV3_CHECK(T >= depth + 2, "MTP depth {} needs sequences of at least {} tokens", depth,
             depth + 2);
  if (o.tie_mtp_embeddings != bound_tie_) bind(o.tie_mtp_embeddings);
  attach_lowp(o.precision);  // the parameters may have changed since the last call
  const cpu::WgradPrecision wgrad(o.precision, o.lowp_storage);
  ds_.moe.ep = o.ep;
  ds_.moe.node_limit = o.node_limit;
  ds_.moe.dispatch = o.dispatch;
  if (T > rope_len_) {
    cos_sin_ = rope_cos_sin(c_, T);
    rope_len_ = T;
  }
  const float* cs = cos_sin_.data();
  const bool rc = o.recompute;
  const auto t_start = std::chrono::steady_clock::now();
  set_profiling(o.profile);
  if (o.profile) step_profile() = StepProfile{};
  if (stats) {
    stats->moe_layer.clear();
    stats->mtp_loss.assign(size_t(depth), 0.0);
  }
  size_t n_moe = 0;
  auto record_load = [&](const MoeActs<S>& a, int64_t layer) {
    if (!stats) return;
    if (stats->expert_load.size() <= n_moe) stats->expert_load.resize(n_moe + 1);
    stats->expert_load[n_moe++].assign(a.load.begin(), a.load.end());
    stats->moe_layer.push_back(layer);
  };

  // Forward: embedding, decoder layers, final norm, head + CE (its backward runs at once).
  int32_t* tgt = grow(targets_, size_t(N));
  for (int64_t i = 0; i < N; ++i) tgt[i] = i % T + 1 < T ? tokens[i + 1] : -1;
  S* h = grow(h_, size_t(N * D));
  embedding_forward<S>(h, w_.embed, tokens, N);
  double bal = 0;
  const DecoderDims dd{B, T, rc};
  for (int64_t l = 0; l < L; ++l) {
    decoder_layer_forward(h, w_.layers[size_t(l)], c_, dd, cs, acts_[size_t(l)], ds_);
    if (w_.layers[size_t(l)].moe) {
      bal += balance(acts_[size_t(l)].moe, B, T, o);
      record_load(acts_[size_t(l)].moe, l);
    }
  }
  S* hf = grow(hf_, size_t(N * D));
  S* rstd = grow(final_rstd_, size_t(N));
  cpu::rmsnorm_forward(hf, rstd, h, w_.norm, N, D, S(c_.rms_norm_eps));
  const int64_t n_main = B * (T - 1);
  S* dhf = backward ? grow(dhf_, size_t(N * D)) : nullptr;
  int64_t cnt = 0;
  const double main_loss =
      head_cross_entropy<S>(dhf, g_.head, hf, w_.head, tgt, N, S(1.0 / double(n_main)), &cnt, hs_) /
      double(n_main);
  // MTP depths 1..D.
  double mtp_sum = 0;
  const S* prev = hf;
  for (int64_t k = 1; k <= depth; ++k) {
    const int64_t n_k = B * (T - 1 - k);
    const double w = o.mtp_lambda / double(depth);
    MtpActs<S>& ma = mtp_acts_[size_t(k - 1)];
    const double ce = mtp_forward(prev, tokens, B, T, k, w_.mtp[size_t(k - 1)],
                                  backward ? &g_.mtp[size_t(k - 1)] : nullptr, S(w / double(n_k)),
                                  c_, rc, cs, ma, ms_, ds_) /
                      double(n_k);
    if (stats) stats->mtp_loss[size_t(k - 1)] = ce;
    mtp_sum += w * ce;
    if (w_.mtp[size_t(k - 1)].layer.moe) {
      bal += balance(ma.layer.moe, B, T - k, o);
      record_load(ma.layer.moe, L + k - 1);
    }
    prev = ma.y.data();
  }
  const double total = main_loss + mtp_sum + bal;

  if (backward) {
    for (int64_t k = depth; k >= 1; --k) {
      S* dprev = k == 1 ? dhf : mtp_acts_[size_t(k - 2)].dy.data();
      mtp_backward(dprev, g_.mtp[size_t(k - 1)], w_.mtp[size_t(k - 1)], B, T, k, c_, rc, cs,
                   mtp_acts_[size_t(k - 1)], ms_, ds_);
      if (o.grads_ready)
        o.grads_ready(layer_range_[size_t(L + k - 1)].first,
                      layer_range_[size_t(L + k - 1)].second);
    }
    S* dh = grow(dh_, size_t(N * D));
    cpu::rmsnorm_backward(dh, g_.norm, dhf, h, w_.norm, rstd, N, D);
    for (int64_t l = L - 1; l >= 0; --l) {
      decoder_layer_backward(dh, g_.layers[size_t(l)], w_.layers[size_t(l)], c_, dd, cs,
                             acts_[size_t(l)], ds_);
      if (o.grads_ready)
        o.grads_ready(layer_range_[size_t(l)].first, layer_range_[size_t(l)].second);
    }
    embedding_backward(g_.embed, dh, tokens, N, D);
  }

  if (stats) {
    stats->loss = total;
    stats->main_loss = main_loss;
    stats->balance_loss = bal;
    stats->expert_load.resize(n_moe);
    size_t bytes = (h_.size() + hf_.size() + final_rstd_.size()) * sizeof(S) +
                   targets_.size() * sizeof(int32_t);
    for (const auto& a : acts_) bytes += a.bytes();
    for (int64_t k = 0; k < depth; ++k) bytes += mtp_acts_[size_t(k)].bytes();
    stats->activation_bytes = bytes;
    stats->step_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    if (o.profile) stats->profile = step_profile();
  }
  return total;
}

template <typename S>
double TrainModelT<S>::forward_backward(const int32_t* tokens, int64_t B, int64_t T,
                                        const TrainOptions& o, StepStats* stats) {
  return run(tokens, B, T, o, true, stats);
}

template <typename S>
double TrainModelT<S>::forward_loss(const int32_t* tokens, int64_t B, int64_t T,
                                    const TrainOptions& o, StepStats* stats) {
  return run(tokens, B, T, o, false, stats);
}

template class TrainModelT<float>;
template class TrainModelT<double>;

}  // namespace dsv3::model
