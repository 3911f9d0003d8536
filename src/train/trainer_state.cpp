// The checkpoint form of a `dsv3 train` run's state (trainer_state.hpp): FP32 weights with the
// routing biases, AdamW moments and step, sampler position and RNG state as tensors, the configs,
// thread count, tokenizer hash and elapsed time in meta.json.
#include <array>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "train/export.hpp"
#include "train/trainer_state.hpp"

namespace fs = std::filesystem;

namespace dsv3::train {

namespace {

const Blob& find_blob(const CheckpointData& ck, const std::string& name) {
  auto it = ck.tensors.find(name);
  DSV3_CHECK(it != ck.tensors.end(), "checkpoint step {}: tensor '{}' is missing", ck.step, name);
  return it->second;
}

}  // namespace

std::string tokenizer_json_hash(const std::string& dir) {
  return hex64(hash_file((fs::path(dir) / "tokenizer.json").string()));
}

void save_state(TrainerState& s, const TrainConfig& cfg, const RunOptions& run, double elapsed) {
  CheckpointData ck;
  ck.step = s.step;
  for (const auto& e : s.store->entries())
    ck.tensors["param." + e.name] = Blob::of(DType::F32, e.shape, s.store->params() + e.offset);
  for (const auto& t : (s.zopt ? s.zopt->shard() : *s.opt).state_tensors("optimizer."))
    ck.tensors[t.name] = Blob::of(t.dtype, t.shape, t.data);
  const auto sa = s.sampler->state().to_array();
  ck.tensors["sampler.state"] = Blob::i64({sa.begin(), sa.end()});
  const auto rs = s.rng.state();
  std::vector<int64_t> r(4);
  std::memcpy(r.data(), rs.data(), sizeof rs);
  ck.tensors["rng.state"] = Blob::i64(r);
  TrainConfig c = cfg;
  c.threads = s.threads;
  ck.meta = {{"format", "dsv3-train"},
             {"train_config", c.to_json()},
             {"model_config", s.mc.to_json()},
             {"threads", s.threads},
             {"total_steps", s.total},
             {"tokenizer_hash", tokenizer_json_hash(s.tokenizer_dir)},
             {"elapsed_s", elapsed}};
  if (s.distributed()) {
    ck.meta["layout"] = layout_json(s);
    ck.meta["rank"] = s.rank;
    save_checkpoint_sharded(run.run_dir, ck, *s.world, layout_json(s), cfg.keep_last);
    return;
  }
  save_checkpoint(run.run_dir, ck, cfg.keep_last);
}

void restore_state(TrainerState& s, const CheckpointData& ck) {
  if (s.distributed()) {
    const nlohmann::json want = layout_json(s);
    DSV3_CHECK(ck.meta.contains("layout") && ck.meta["layout"] == want,
               "checkpoint step {} was written with layout {}, this job is {}: resume it with the "
               "same mpirun -np and --dp/--ep/--ranks-per-node",
               ck.step, ck.meta.value("layout", nlohmann::json()).dump(), want.dump());
  }
  restore_params(*s.store, ck);
  std::vector<StateTensor> st;
  for (const auto& [name, b] : ck.tensors)
    if (name.starts_with("optimizer.")) st.push_back({name, b.dtype, b.shape, b.bytes.data()});
  (s.zopt ? s.zopt->shard() : *s.opt).load_state_tensors(st, "optimizer.");
  s.sampler->set_state(SamplerState::from_array(find_blob(ck, "sampler.state").to_i64("sampler")));
  const auto r = find_blob(ck, "rng.state").to_i64("rng");
  DSV3_CHECK(r.size() == 4, "checkpoint step {}: rng.state must hold 4 values", ck.step);
  std::array<uint64_t, 4> rs;
  std::memcpy(rs.data(), r.data(), sizeof rs);
  s.rng.set_state(rs);
  const std::string th = ck.meta.value("tokenizer_hash", "");
  DSV3_CHECK(th == tokenizer_json_hash(s.tokenizer_dir),
             "checkpoint step {}: {}/tokenizer.json changed since the checkpoint was written",
             ck.step, s.tokenizer_dir);
  s.step = ck.step;
  s.elapsed_before = ck.meta.value("elapsed_s", 0.0);
}

}  // namespace dsv3::train
