// The training step; see model_train.hpp. Reads top to bottom like the paper: embedding ->
// L decoder layers -> model.norm -> head + CE, then the MTP depths; backward replays the same
// list in reverse (MTP depths D..1 first, their gradient on h^0 joins the main head's).
#include "train/model_train.hpp"

#include <algorithm>
#include <chrono>
#include <type_traits>

#include "backend/cpu/ops.hpp"
#include "core/error.hpp"
#include "model/rope.hpp"
#include "train/balance.hpp"
#include "train/linalg.hpp"

namespace dsv3::train {

template <typename S>
TrainModelT<S>::TrainModelT(const model::ModelConfig& c, const ParamLayout& layout, const S* params,
                            S* grads)
    : c_(c), layout_(&layout), params_(params), grads_(grads) {
  bind(true);
  acts_.resize(size_t(c_.num_hidden_layers));
  mtp_acts_.resize(size_t(c_.num_nextn_predict_layers));
}

template <typename S>
void TrainModelT<S>::bind(bool tie) {
  const ParamLayout& l = *layout_;
  w_.clear();
  g_.clear();
  for (int64_t i = 0; i < c_.num_hidden_layers; ++i) {
    w_.push_back(bind_layer<const S>(l, params_, c_, i, c_.is_moe_layer(i)));
    g_.push_back(bind_layer<S>(l, grads_, c_, i, c_.is_moe_layer(i)));
  }
  embed_ = params_ + l.get("model.embed_tokens.weight").offset;
  norm_ = params_ + l.get("model.norm.weight").offset;
  head_ = params_ + l.get("lm_head.weight").offset;
  dembed_ = grads_ + l.get("model.embed_tokens.weight").offset;
  dnorm_ = grads_ + l.get("model.norm.weight").offset;
  dhead_ = grads_ + l.get("lm_head.weight").offset;
  mw_.clear();
  mg_.clear();
  for (int64_t k = 1; k <= c_.num_nextn_predict_layers; ++k) {
    mw_.push_back(bind_mtp<const S>(l, params_, c_, k, tie));
    mg_.push_back(bind_mtp<S>(l, grads_, c_, k, tie));
  }
  bound_tie_ = tie;
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
    // Its gradient on the scores joins the gate-weight gradient in moe_train_backward.
    return balance_loss(a.scores.data(), a.indices.data(), B, T, E, K, float(o.balance_alpha),
                        a.dscores.data());
  } else {
    DSV3_FAIL("the sequence-wise balance loss is implemented for float models only");
  }
}

template <typename S>
double TrainModelT<S>::run(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o,
                           bool backward, StepStats* stats) {
  const int64_t N = B * T, D = c_.hidden_size, V = c_.vocab_size, L = c_.num_hidden_layers;
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
  if (T > rope_len_) {
    cos_sin_ = model::rope_cos_sin(c_, T);
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
  embedding_forward(h, embed_, tokens, N, D, V);
  double bal = 0;
  const DecoderDims dd{B, T, rc};
  for (int64_t l = 0; l < L; ++l) {
    decoder_layer_forward(h, w_[size_t(l)], c_, dd, cs, acts_[size_t(l)], ds_);
    if (w_[size_t(l)].moe) {
      bal += balance(acts_[size_t(l)].moe, B, T, o);
      record_load(acts_[size_t(l)].moe, l);
    }
  }
  S* hf = grow(hf_, size_t(N * D));
  S* rstd = grow(final_rstd_, size_t(N));
  cpu::rmsnorm_forward(hf, rstd, h, norm_, N, D, S(c_.rms_norm_eps));
  const int64_t n_main = B * (T - 1);
  S* dhf = backward ? grow(dhf_, size_t(N * D)) : nullptr;
  int64_t cnt = 0;
  const double main_loss =
      head_cross_entropy(dhf, dhead_, hf, head_, tgt, N, D, V, S(1.0 / double(n_main)), &cnt, hs_) /
      double(n_main);
  // MTP depths 1..D.
  double mtp_sum = 0;
  const S* prev = hf;
  for (int64_t k = 1; k <= depth; ++k) {
    const int64_t n_k = B * (T - 1 - k);
    const double w = o.mtp_lambda / double(depth);
    MtpActs<S>& ma = mtp_acts_[size_t(k - 1)];
    const double ce = mtp_forward(prev, tokens, B, T, k, mw_[size_t(k - 1)],
                                  backward ? &mg_[size_t(k - 1)] : nullptr, S(w / double(n_k)), c_,
                                  rc, cs, ma, ms_, ds_) /
                      double(n_k);
    if (stats) stats->mtp_loss[size_t(k - 1)] = ce;
    mtp_sum += w * ce;
    if (mw_[size_t(k - 1)].layer.moe) {
      bal += balance(ma.layer.moe, B, T - k, o);
      record_load(ma.layer.moe, L + k - 1);
    }
    prev = ma.y.data();
  }
  const double total = main_loss + mtp_sum + bal;

  if (backward) {
    for (int64_t k = depth; k >= 1; --k) {
      S* dprev = k == 1 ? dhf : mtp_acts_[size_t(k - 2)].dy.data();
      mtp_backward(dprev, mg_[size_t(k - 1)], mw_[size_t(k - 1)], B, T, k, c_, rc, cs,
                   mtp_acts_[size_t(k - 1)], ms_, ds_);
    }
    S* dh = grow(dh_, size_t(N * D));
    cpu::rmsnorm_backward(dh, dnorm_, dhf, h, norm_, rstd, N, D);
    for (int64_t l = L - 1; l >= 0; --l)
      decoder_layer_backward(dh, g_[size_t(l)], w_[size_t(l)], c_, dd, cs, acts_[size_t(l)], ds_);
    embedding_backward(dembed_, dh, tokens, N, D);
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

}  // namespace dsv3::train
