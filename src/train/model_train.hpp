// The DeepSeek-V3 training step on the CPU: forward saving activations, the explicit backward in
// reverse order, and the training objective of the report (§2.2 eq. 25 and §2.1.2 eq. 20):
//   loss = CE_main + λ/D · Σ_k CE_MTP_k  (+ the sequence-wise balance loss when α > 0)
// CE_main is the mean over the B·(T-1) next-token predictions, CE_MTP_k over B·(T-1-k).
// Parameters and gradients live in flat arenas (train/params.hpp); gradients are ADDED, so
// micro-batches accumulate until the caller zeroes them.
//
// Glossary: B batch, T tokens per sequence, N = B·T, D hidden, V vocabulary, L main layers,
// E routed experts, K experts per token.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.hpp"
#include "train/decoder_train.hpp"
#include "train/mtp_train.hpp"
#include "train/params.hpp"
#include "train/profile.hpp"

namespace dsv3::train {

struct TrainOptions {
  double mtp_lambda = 0;           // λ; MTP runs when > 0 (and the config has MTP layers)
  int64_t mtp_depth = 0;           // D; 0: num_nextn_predict_layers
  bool tie_mtp_embeddings = true;  // MTP uses (and adds gradients to) the main embedding/head
  bool recompute = false;          // recompute RMSNorm outputs and MLA up-projections in backward
  double balance_alpha = 0;        // sequence-wise balance loss α (0: off); float models only
  bool profile = false;            // fill StepStats::profile (time per phase)
};

struct StepStats {
  double loss = 0;                                // the objective above
  double main_loss = 0;                           // CE_main
  std::vector<double> mtp_loss;                   // CE_MTP_k per depth
  double balance_loss = 0;                        // summed over MoE layers
  std::vector<int64_t> moe_layer;                 // layer index of each row below (MTP: L+k-1)
  std::vector<std::vector<int64_t>> expert_load;  // [MoE layers][E] tokens routed per expert
  size_t activation_bytes = 0;                    // saved activations of this step (all layers)
  double step_s = 0;                              // wall time of the call
  StepProfile profile;                            // with TrainOptions::profile
};

template <typename S>
class TrainModelT {
 public:
  // params/grads: arenas laid out by `layout` (kept by pointer; must outlive the model).
  TrainModelT(const model::ModelConfig& c, const ParamLayout& layout, const S* params, S* grads);

  // One forward and backward over tokens [B, T]; adds the gradients of the objective into the
  // gradient arena; returns the objective.
  double forward_backward(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o,
                          StepStats* stats = nullptr);
  // The objective without gradients (evaluation).
  double forward_loss(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o,
                      StepStats* stats = nullptr);

  const model::ModelConfig& config() const { return c_; }

 private:
  double run(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o, bool backward,
             StepStats* stats);
  double balance(MoeActs<S>& a, int64_t B, int64_t T, const TrainOptions& o);
  void bind(bool tie);

  model::ModelConfig c_;
  const ParamLayout* layout_;
  const S* params_;
  S* grads_;
  bool bound_tie_ = true;
  std::vector<LayerParams<const S>> w_;
  std::vector<LayerParams<S>> g_;
  std::vector<MtpParams<const S>> mw_;
  std::vector<MtpParams<S>> mg_;
  const S *embed_ = nullptr, *norm_ = nullptr, *head_ = nullptr;
  S *dembed_ = nullptr, *dnorm_ = nullptr, *dhead_ = nullptr;

  std::vector<float> cos_sin_;  // [T_max, Dr/2, 2]
  int64_t rope_len_ = 0;
  // Saved activations.
  std::vector<int32_t> targets_;        // [N]
  std::vector<LayerActs<S>> acts_;      // per main layer
  std::vector<S> h_, hf_, final_rstd_;  // [N, D] residual after layer L-1, after model.norm; [N]
  std::vector<MtpActs<S>> mtp_acts_;
  // Scratch.
  std::vector<S> dh_, dhf_;
  DecoderScratch<S> ds_;
  MtpScratch<S> ms_;
  HeadScratch<S> hs_;
};

using TrainModel = TrainModelT<float>;

}  // namespace dsv3::train
