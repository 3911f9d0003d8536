// The parameter table: every tensor of a DeepSeek-V2/V3 checkpoint under its Hugging Face name,
// with shape and role, as the binding of weights.hpp lists them (one list). Loading, saving,
// initialization, the training arenas and their checkpoints are all driven by this table.
//
// ParamLayout places the table in one flat arena (parameters, gradients, optimizer state share
// the layout); ArenaBinder binds the model's weight structs to such an arena in place.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  ParamRole role;
  bool fp8 = false;           // see ParamFlags
  bool residual_out = false;  // see ParamFlags
  bool mtp = false;           // see ParamFlags
  // The tensor this one copies when a checkpoint omits it (the MTP module's embedding and head
  // are the main ones), or empty.
  std::string fallback;
};

std::vector<ParamSpec> param_table(const ModelConfig& c);

// Weight decay (AdamW): on every weight matrix — linear layers, the router weight
// (mlp.gate.weight), the embedding and the output heads (2-D matrices, as Megatron-LM and
// nanoGPT-style trainers do); not on RMSNorm weights, not on the routing correction bias
// (which is no gradient-trained parameter at all: the balance-bias update moves it).
struct ParamEntry {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;  // in elements, into the arenas
  ParamRole role = ParamRole::Linear;
  bool mtp = false;
  bool fp8 = false;           // stored as FP8 block-scaled in FP8 exports
  bool residual_out = false;  // o_proj / down_proj
  bool weight_decay = false;  // see above
  bool trainable = true;      // false: e_score_correction_bias (gradient always zero)
  std::string fallback;       // see ParamSpec
};

// The routed experts an arena holds in every MoE layer: all, or (expert parallelism) one rank's
// share [begin, end).
struct ExpertShard {
  int64_t begin = 0, end = -1;  // end < 0: all experts
  bool all() const { return end < 0; }
  bool holds(int64_t expert) const { return all() || (begin <= expert && expert < end); }
};

// The routed expert a tensor name belongs to ("model.layers.{l}.mlp.experts.{e}.*"), or -1.
int64_t routed_expert_of(const std::string& name);

// Offsets of every tensor of param_table(config) in a flat arena (each on its own cache lines).
// With an expert shard, the routed experts outside it are left out (a rank's arena under expert
// parallelism: the replicated parts and its own experts, in table order).
class ParamLayout {
 public:
  ParamLayout() = default;
  explicit ParamLayout(const ModelConfig& c, ExpertShard shard = {});
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const ParamEntry* find(const std::string& name) const;
  const ParamEntry& get(const std::string& name) const;  // throws naming the tensor
  int64_t total() const { return total_; }
  const ExpertShard& shard() const { return shard_; }
  // In the table but left out by the shard (another rank's routed expert).
  bool omitted(const std::string& name) const {
    return !shard_.all() && !shard_.holds(routed_expert_of(name)) && routed_expert_of(name) >= 0;
  }

 private:
  std::vector<ParamEntry> entries_;
  std::map<std::string, size_t> index_;
  int64_t total_ = 0;
  ExpertShard shard_;
};

// Binds kind K (W<S> for parameters, G<S> for gradients) to an arena `base` of S laid out by
// `layout`, without copying.
template <typename K, typename S>
class ArenaBinder {
 public:
  ArenaBinder(const ParamLayout& layout, S* base) : layout_(layout), base_(base) {}
  typename K::Lin lin(const std::string& n, int64_t rows, int64_t cols, ParamFlags,
                      const std::string& = {}) {
    S* p = at(n);
    if (!p) return {};  // another rank's expert: unbound
    if constexpr (std::is_same_v<typename K::Lin, cpu::LinearWeight>)
      return cpu::LinearWeight({DType::F32, rows, cols, p, nullptr}, cpu::Compute::F32);
    else if constexpr (std::is_pointer_v<typename K::Lin>)
      return p;
    else
      return {p, rows, cols};
  }
  typename K::Vec vec(const std::string& n, const std::vector<int64_t>&, ParamFlags) {
    return at(n);
  }
  typename K::Table table(const std::string& n, int64_t rows, int64_t cols, ParamFlags,
                          const std::string&) {
    S* p = at(n);
    if constexpr (std::is_same_v<typename K::Table, cpu::WeightView>)
      return {DType::F32, rows, cols, p, nullptr};
    else if constexpr (std::is_pointer_v<typename K::Table>)
      return p;
    else
      return {p, rows, cols};
  }

 private:
  S* at(const std::string& n) {
    if (layout_.omitted(n)) return nullptr;
    return base_ + layout_.get(n).offset;
  }
  const ParamLayout& layout_;
  S* base_;
};

// The weights (K = W<S>, base const) or gradients (K = G<S>) of a model in an arena, with
// `mtp_modules` MTP modules. With tie_mtp, the MTP modules use the main embedding and head (the
// paper's sharing; their own copies in the arena are then unused).
template <typename K, typename S>
ModelW<K> bind_arena(const ModelConfig& c, const ParamLayout& layout, S* base, int64_t mtp_modules,
                     bool tie_mtp) {
  ModelW<K> w;
  ArenaBinder<K, S> b(layout, base);
  bind_model(w, b, c, mtp_modules);
  if (tie_mtp)
    for (auto& m : w.mtp) {
      m.embed = b.table("model.embed_tokens.weight", c.vocab_size, c.hidden_size, {}, "");
      m.head = b.lin("lm_head.weight", c.vocab_size, c.hidden_size, {});
    }
  return w;
}

}  // namespace dsv3::model
