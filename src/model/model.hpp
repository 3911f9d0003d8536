// The DeepSeek-V3 model for inference: weights loaded from a Hugging Face checkpoint directory
// (config.json + safetensors, BF16 / F32 / F16 / FP8 block-scaled), the forward pass over a
// latent KV cache, and the MTP module (report §2.2).
//
// Glossary: B batch, T tokens in this call, D hidden, V vocab, L main layers.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "io/safetensors.hpp"
#include "model/config.hpp"
#include "model/mla.hpp"
#include "model/moe.hpp"

namespace dsv3::model {

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [D]
  MlaWeights attn;
  bool moe = false;
  MlpWeights mlp;    // dense layers
  MoeWeights moe_w;  // MoE layers
};

struct MtpWeights {
  io::TensorInfo embed;  // [V, D] (the MTP layer's copy, or the main embedding)
  std::vector<float> enorm, hnorm, head_norm;  // [D]
  cpu::LinearWeight eh_proj;                   // [D, 2D]
  LayerWeights layer;
  cpu::LinearWeight head;  // [V, D]
};

struct LoadOptions {
  cpu::Compute compute = cpu::Compute::F32;
  bool load_mtp = true;  // load the MTP module when the checkpoint has it
  // Where the weights live: a private huge-page copy (default; faster decode, see
  // io::Residency) or the mmapped checkpoint (no copy, pages read on first touch).
  io::Residency residency = io::Residency::HugePageCopy;
};

// Latent KV cache of every layer (MTP layers after the main ones).
class KVCache {
 public:
  KVCache(const ModelConfig& c, int64_t slots, int64_t max_seq, bool with_mtp);
  MlaCache& layer(int64_t i) { return layers_[size_t(i)]; }
  int64_t slots() const { return slots_; }
  int64_t max_seq() const { return max_seq_; }
  // Bytes stored per token across all main layers.
  static size_t bytes_per_token(const ModelConfig& c);

 private:
  std::vector<MlaCache> layers_;
  int64_t slots_, max_seq_;
};

// Wall time of a forward by part, accumulated (for benchmarks and profiling; seconds).
struct ForwardTimes {
  double attention = 0;  // attention blocks (norm excluded)
  double ffn = 0;        // dense MLP and MoE blocks, router included
  double head = 0;       // final norm and LM head
  double total = 0;      // the whole forward
};

struct ForwardOptions {
  AttnImpl attn = AttnImpl::Auto;
  ForwardTimes* times = nullptr;  // optional: adds this forward's times
  bool all_logits = true;         // false: logits of the last position of each sequence only
  float* final_hidden = nullptr;  // [B, T, D] after model.norm (the MTP input), optional
  std::vector<Routing>* routes = nullptr;  // one entry per MoE layer, optional
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opt = {});

  const ModelConfig& config() const { return config_; }
  bool has_mtp() const { return !mtp_.empty(); }
  cpu::Compute compute() const { return compute_; }

  // tokens [B, T] at positions start_pos..start_pos+T-1 of cache slots 0..B-1.
  // logits: [B, T, V] (all_logits) or [B, V].
  void forward(const int32_t* tokens, int64_t B, int64_t T, int64_t start_pos, KVCache& cache,
               float* logits, const ForwardOptions& opt = {});

  // MTP depth 1: from the main model's post-norm hidden states h[B, T, D] at positions
  // start_pos.. and the next tokens next[B, T] (t_{i+1}), logits[B, T, V] for t_{i+2}.
  void mtp_forward(const float* hidden, const int32_t* next, int64_t B, int64_t T,
                   int64_t start_pos, KVCache& cache, float* logits, const ForwardOptions& opt = {},
                   float* mtp_hidden = nullptr);

  // Bytes of weights read to decode one token (attention + dense/shared + K routed experts +
  // head), for bandwidth accounting.
  size_t active_weight_bytes() const;
  size_t total_weight_bytes() const;

 private:
  Model() = default;
  // Up to this many tokens per forward run on a spin team (core/parallel.hpp): all GEMV there.
  static constexpr int64_t kSpinTeamTokens = 2;
  void forward_layers(const int32_t* tokens, int64_t B, int64_t T, int64_t start_pos,
                      KVCache& cache, float* logits, const ForwardOptions& opt);
  void embed(float* out, const io::TensorInfo& table, const int32_t* tokens, int64_t n) const;
  void decoder_layer(float* h, int64_t B, int64_t T, int64_t start_pos, const LayerWeights& lw,
                     MlaCache& cache, const ForwardOptions& opt);

  ModelConfig config_;
  cpu::Compute compute_ = cpu::Compute::F32;
  io::TensorStore store_;
  std::vector<std::vector<uint8_t>> owned_;  // converted copies (e.g. F16 weights)
  io::TensorInfo embed_;
  std::vector<LayerWeights> layers_;
  std::vector<float> norm_;
  cpu::LinearWeight lm_head_;
  std::vector<MtpWeights> mtp_;
  std::vector<float> cos_sin_;  // [max_position_embeddings, Dr/2, 2]

  // Scratch, reused across calls.
  std::vector<float> h_, xn_, tmp_;
  MlaScratch mla_s_;
  MoeScratch moe_s_;
  Routing routing_;
};

}  // namespace dsv3::model
