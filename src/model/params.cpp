// The parameter table and its arena layout; see params.hpp.
#include "model/params.hpp"

#include "core/error.hpp"

namespace dsv3::model {

std::string layer_prefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

namespace {
// A binder that records what it is asked for (the kind's types are placeholders).
struct TableKind {
  using Lin = int;
  using Vec = int;
  using Table = int;
};
struct RecordBinder {
  std::vector<ParamSpec> t;
  int lin(const std::string& n, int64_t rows, int64_t cols, ParamFlags f,
          const std::string& fallback = {}) {
    t.push_back({n, {rows, cols}, f.role, f.fp8, f.residual_out, f.mtp, fallback});
    return 0;
  }
  int vec(const std::string& n, const std::vector<int64_t>& shape, ParamFlags f) {
    t.push_back({n, shape, f.role, f.fp8, f.residual_out, f.mtp, {}});
    return 0;
  }
  int table(const std::string& n, int64_t rows, int64_t cols, ParamFlags f,
            const std::string& fallback) {
    return lin(n, rows, cols, f, fallback);
  }
};
}  // namespace

std::vector<ParamSpec> param_table(const ModelConfig& c) {
  ModelW<TableKind> w;
  RecordBinder b;
  bind_model(w, b, c, c.num_nextn_predict_layers);
  return std::move(b.t);
}

int64_t routed_expert_of(const std::string& name) {
  const std::string_view key = ".mlp.experts.";
  const size_t at = name.find(key);
  if (at == std::string::npos || !name.starts_with("model.layers.")) return -1;
  int64_t e = 0;
  size_t i = at + key.size();
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) e = e * 10 + (name[i] - '0');
  return i < name.size() && name[i] == '.' ? e : -1;
}

ParamLayout::ParamLayout(const ModelConfig& c, ExpertShard shard) : shard_(shard) {
  DSV3_CHECK(shard.all() ||
                 (0 <= shard.begin && shard.begin < shard.end && shard.end <= c.n_routed_experts),
             "expert shard [{}, {}) outside the {} routed experts", shard.begin, shard.end,
             c.n_routed_experts);
  for (const auto& s : param_table(c)) {
    if (!shard.all() && !shard.holds(routed_expert_of(s.name)) && routed_expert_of(s.name) >= 0)
      continue;
    ParamEntry e;
    e.name = s.name;
    e.shape = s.shape;
    e.numel = 1;
    for (auto d : s.shape) e.numel *= d;
    // 16-element alignment keeps every tensor on its own cache lines.
    e.offset = total_;
    total_ += (e.numel + 15) / 16 * 16;
    e.role = s.role;
    e.mtp = s.mtp;
    e.fp8 = s.fp8;
    e.residual_out = s.residual_out;
    e.weight_decay = s.role != ParamRole::Norm && s.role != ParamRole::RouterBias;
    e.trainable = s.role != ParamRole::RouterBias;
    e.fallback = s.fallback;
    index_[e.name] = entries_.size();
    entries_.push_back(std::move(e));
  }
}

const ParamEntry* ParamLayout::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const ParamEntry& ParamLayout::get(const std::string& name) const {
  const ParamEntry* e = find(name);
  DSV3_CHECK(e, "parameter '{}' is not in the parameter table of this config", name);
  return *e;
}

}  // namespace dsv3::model
