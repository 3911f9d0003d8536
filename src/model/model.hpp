// The DeepSeek-V3 model: one set of layer functions (mla, moe, mlp, decoder, mtp, embed_head)
// driven by two loops over the same weight view (weights.hpp):
//   Model          inference: the forward over a latent KV cache and the MTP step, on a Hugging
//                  Face checkpoint (BF16 / F32 / F16 / FP8 block-scaled) or, without copying, on
//                  a training arena of FP32 parameters;
//   TrainModelT<S> training: forward saving activations, the explicit backward in reverse order,
//                  and the objective of the report (§2.2 eq. 25 and §2.1.2 eq. 20):
//                    loss = CE_main + λ/D · Σ_k CE_MTP_k  (+ the sequence-wise balance loss)
//                  CE_main is the mean over the B·(T-1) next-token predictions, CE_MTP_k over
//                  B·(T-1-k). Gradients are ADDED into the gradient arena.
//
// Glossary: B batch, T tokens per sequence (or new tokens of a call), N = B·T, D hidden,
// V vocab, L main layers, E routed experts, K experts per token.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "backend/cpu/linear_lowp.hpp"
#include "core/profile.hpp"
#include "io/safetensors.hpp"
#include "model/config.hpp"
#include "model/decoder.hpp"
#include "model/mtp.hpp"
#include "model/params.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

struct LoadOptions {
  cpu::Compute compute = cpu::Compute::F32;
  bool load_mtp = true;  // load the MTP module when the checkpoint has it
  // Where the weights live: a private huge-page copy (default; faster decode, see
  // io::Residency) or the mmapped checkpoint (no copy, pages read on first touch).
  io::Residency residency = io::Residency::HugePageCopy;
};

// Latent KV cache of every layer (MTP layers after the main ones): `slots` blocks of `max_seq`
// positions per layer. Model::forward puts sequence b in block b; the serving engine uses it as
// a pool of small blocks addressed through block tables (SeqSpan).
class KVCache {
 public:
  KVCache(const ModelConfig& c, int64_t slots, int64_t max_seq, bool with_mtp);
  MlaCache& layer(int64_t i) { return layers_[size_t(i)]; }
  int64_t layers() const { return int64_t(layers_.size()); }
  int64_t slots() const { return slots_; }
  int64_t max_seq() const { return max_seq_; }
  // Bytes stored per token across all main layers.
  static size_t bytes_per_token(const ModelConfig& c);

 private:
  std::vector<MlaCache> layers_;
  int64_t slots_, max_seq_;
};

struct ForwardOptions {
  AttnImpl attn = AttnImpl::Auto;
  ForwardTimes* times = nullptr;  // optional: adds this forward's times
  bool all_logits = true;         // false: logits of the last position of each sequence only
  float* final_hidden = nullptr;  // [B, T, D] after model.norm (the MTP input), optional
  bool head = true;               // false: stop after model.norm (logits untouched)
  std::vector<Routing>* routes = nullptr;  // one entry per MoE layer, optional
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opt = {});
  // The model over a training arena of FP32 parameters laid out by `layout` (kept by pointer;
  // both must outlive the model): nothing is copied, so it sees the arena's current values.
  // MTP modules are the arena's, using the main embedding and head when tie_mtp.
  static std::unique_ptr<Model> view(const ModelConfig& c, const ParamLayout& layout,
                                     const float* params, bool with_mtp, bool tie_mtp = true);

  const ModelConfig& config() const { return config_; }
  bool has_mtp() const { return !w_.mtp.empty(); }
  cpu::Compute compute() const { return compute_; }

  // tokens [B, T] at positions start_pos..start_pos+T-1 of cache slots 0..B-1.
  // logits: [B, T, V] (all_logits) or [B, V].
  void forward(const int32_t* tokens, int64_t B, int64_t T, int64_t start_pos, KVCache& cache,
               float* logits, const ForwardOptions& opt = {});

  // A ragged batch over a paged cache (the serving engine's step): the N = Σ len tokens of
  // `seqs` (tokens[N], in order of the sequences), each sequence at its own positions over its
  // own block table into `cache` (whose layers are pools of cache.slots() blocks of
  // cache.max_seq() positions). logits[nrows, V] of the tokens rows[0..nrows) (indices into the
  // N; rows null: all N). opt.final_hidden receives [N, D]; opt.all_logits is not used. forward
  // is the special case of B sequences of T tokens, sequence b in the one block b.
  void forward_batch(const int32_t* tokens, std::span<const SeqSpan> seqs, KVCache& cache,
                     float* logits, const int64_t* rows, int64_t nrows,
                     const ForwardOptions& opt = {});
  // MTP module `depth` over a ragged batch: hidden[N, D] (forward_batch's final_hidden), next[N]
  // the token following each; logits[nrows, V] of the rows (null: all N).
  void mtp_forward_batch(const float* hidden, const int32_t* next, std::span<const SeqSpan> seqs,
                         KVCache& cache, float* logits, const int64_t* rows, int64_t nrows,
                         const ForwardOptions& opt = {}, float* mtp_hidden = nullptr,
                         int64_t depth = 0);

  // MTP module `depth` (0-based; report §2.2): from the previous depth's hidden states
  // h[B, T, D] at positions start_pos.. (depth 0: the main model's post-norm output) and the
  // tokens next[B, T] that follow them, logits[B, T, V] of the token after those.
  // mtp_hidden[B, T, D] receives h^{depth+1} (the next depth's input) when non-null.
  void mtp_forward(const float* hidden, const int32_t* next, int64_t B, int64_t T,
                   int64_t start_pos, KVCache& cache, float* logits, const ForwardOptions& opt = {},
                   float* mtp_hidden = nullptr, int64_t depth = 0);

  // Next-token cross-entropy of tokens [B, T] from position 0 (evaluation): the SUM over the
  // B·(T-1) predictions of -log p(t_{i+1}); *count receives B·(T-1). The head runs in chunks, so
  // the [B, T, V] logits are never held.
  double cross_entropy(const int32_t* tokens, int64_t B, int64_t T, KVCache& cache,
                       int64_t* count = nullptr);

  // Bytes of weights read to decode one token (attention + dense/shared + K routed experts +
  // head), for bandwidth accounting. as_bf16: with every linear weight counted at 2 bytes per
  // element (the same model stored as BF16; an FP8 model's ratio of the two bounds its speedup).
  size_t active_weight_bytes(bool as_bf16 = false) const;
  // Bytes of one routed expert (gate, up, down) and the number of MoE layers: a step whose
  // tokens reach X distinct (layer, expert) pairs reads active_weight_bytes() - K·moe_layers()
  // ·routed_expert_bytes() + X·routed_expert_bytes() of weights.
  size_t routed_expert_bytes() const;
  int64_t moe_layers() const;
  size_t total_weight_bytes() const;

  // Up to this many tokens per forward run on a spin team (core/parallel.hpp): all GEMV there.
  static constexpr int64_t kSpinTeamTokens = 2;
  // Under Compute::BF16, batched decode forwards of up to this many tokens run on a spin team
  // too: their products are the GEMV or the skinny GEMM (linear.cpp), parallel_for regions both,
  // and their MoE takes whole experts per thread (moe.cpp) with the router on the GEMV.
  static constexpr int64_t kSpinTeamBatchTokens = 32;

 private:
  Model() = default;
  void forward_layers(const int32_t* tokens, std::span<const SeqSpan> seqs, int64_t N,
                      KVCache& cache, float* logits, const int64_t* rows, int64_t nrows,
                      const ForwardOptions& opt);
  // forward's B sequences of T tokens at start_pos, sequence b in cache block b.
  std::span<const SeqSpan> slot_spans(int64_t B, int64_t T, int64_t start_pos);
  void prepare();  // the RoPE table

  ModelConfig config_;
  cpu::Compute compute_ = cpu::Compute::F32;
  io::TensorStore store_;                    // the checkpoint (empty for an arena view)
  size_t arena_bytes_ = 0;                   // an arena view's parameter bytes
  std::vector<std::vector<uint8_t>> owned_;  // converted copies (F16 weights, norms, router)
  ModelW<W<float>> w_;
  std::vector<float> cos_sin_;  // [max_position_embeddings, Dr/2, 2]

  // Scratch, reused across calls.
  std::vector<float> h_, xn_, last_, hidden_;
  std::vector<int32_t> targets_;
  std::vector<int32_t> slot_ids_;
  std::vector<SeqSpan> spans_;
  std::vector<int64_t> rows_;
  HeadScratch<float> hs_;
  DecoderScratch<float> ds_;
  MtpScratch<float> ms_;
};

// ---- Training ----

struct TrainOptions {
  double mtp_lambda = 0;           // λ; MTP runs when > 0 (and the config has MTP layers)
  int64_t mtp_depth = 0;           // D; 0: num_nextn_predict_layers
  bool tie_mtp_embeddings = true;  // MTP uses (and adds gradients to) the main embedding/head
  bool recompute = false;          // recompute RMSNorm outputs and MLA up-projections in backward
  double balance_alpha = 0;        // sequence-wise balance loss α (0: off); float models only
  bool profile = false;            // fill StepStats::profile (time per phase)
  // Called during the backward with an arena range [begin, end) (elements) whose gradients are
  // final for this call: each MTP module's layer range after its backward, each decoder layer's
  // after its backward. The rest (embedding, final norm, head) is final when forward_backward
  // returns. Data parallelism starts reducing a range here while the backward goes on.
  std::function<void(int64_t begin, int64_t end)> grads_ready;
  // The expert-parallel group (dist/expert_dispatch.hpp): null, every routed expert runs here;
  // else this rank runs its share of every MoE layer's experts on the tokens all ranks send it.
  dist::Comm* ep = nullptr;
  NodeLimit node_limit;                     // node-limited routing (moe.hpp); off by default
  dist::DispatchStats* dispatch = nullptr;  // adds the step's expert dispatch volume when set
  // Inputs of the linear layers' GEMMs (backend/cpu/linear_lowp.hpp): FP32, BF16 or the FP8
  // recipe of report §3.3; float models only. Master weights and gradients are FP32 in all.
  cpu::Precision precision = cpu::Precision::F32;
  // Low-precision storage (report §3.3.3) under bf16/fp8: the activations saved for the linear
  // layers' Wgrad are kept as the GEMM reads them (cpu::SavedAct: BF16, or E4M3 + 128×1 scales,
  // o_proj's input E5M6) instead of FP32. false: FP32 (the gradients are the same bit for bit,
  // but o_proj's under fp8). The SwiGLU outputs are recomputed in every mode.
  bool lowp_storage = true;
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
  TrainModelT(const ModelConfig& c, const ParamLayout& layout, const S* params, S* grads);

  // One forward and backward over tokens [B, T]; adds the gradients of the objective into the
  // gradient arena; returns the objective.
  double forward_backward(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o,
                          StepStats* stats = nullptr);
  // The objective without gradients (evaluation).
  double forward_loss(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o,
                      StepStats* stats = nullptr);

  const ModelConfig& config() const { return c_; }

 private:
  double run(const int32_t* tokens, int64_t B, int64_t T, const TrainOptions& o, bool backward,
             StepStats* stats);
  double balance(MoeActs<S>& a, int64_t B, int64_t T, const TrainOptions& o);
  void bind(bool tie);
  // Points every linear layer at its low-precision copy, refreshed from the current parameters
  // (precision BF16/FP8; the output heads BF16 in both), or back at the FP32 weight (F32).
  void attach_lowp(cpu::Precision p);

  ModelConfig c_;
  const ParamLayout* layout_;
  const S* params_;
  S* grads_;
  bool bound_tie_ = true;
  ModelW<W<S>> w_;
  ModelW<G<S>> g_;

  std::vector<float> cos_sin_;
  int64_t rope_len_ = 0;
  std::vector<LayerActs<S>> acts_;
  std::vector<MtpActs<S>> mtp_acts_;
  DecoderScratch<S> ds_;
  MtpScratch<S> ms_;
  HeadScratch<S> hs_;
  std::vector<S> h_, hf_, final_rstd_, dhf_, dh_;
  std::vector<int32_t> targets_;
  std::vector<std::pair<int64_t, int64_t>> layer_range_;  // arena range of each layer (MTP after)
  std::vector<cpu::LowpWeight> lowp_;       // one per linear layer, in for_each_linear order
  std::vector<cpu::LowpWeight> head_lowp_;  // main head, then each untied MTP head (BF16)
};

using TrainModel = TrainModelT<float>;

}  // namespace dsv3::model
