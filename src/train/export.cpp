// Implementation of export.hpp.
#include "train/export.hpp"

#include <filesystem>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/file.hpp"
#include "model/export.hpp"
#include "train/train_config.hpp"

namespace fs = std::filesystem;

namespace dsv3::train {

void export_hf(const ParamStore& store, bool tie_mtp, const std::string& dir, DType dtype,
               const std::string& tokenizer_dir) {
  const ParamLayout& layout = store.layout();
  model::ExportOptions o;
  o.dtype = dtype;
  model::save_hf_checkpoint(
      dir, store.config(),
      [&](const model::ParamSpec& spec, float* dst) {
        std::string name = spec.name;
        if (tie_mtp && layout.get(name).mtp) {
          if (name.ends_with(".embed_tokens.weight")) name = "model.embed_tokens.weight";
          if (name.ends_with(".shared_head.head.weight")) name = "lm_head.weight";
        }
        const ParamEntry& e = layout.get(name);
        std::copy_n(store.params() + e.offset, e.numel, dst);
      },
      o);
  if (!tokenizer_dir.empty()) copy_tokenizer_files(tokenizer_dir, dir);
}

void copy_tokenizer_files(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(from) / name;
    if (fs::exists(src)) io::atomic_write((fs::path(to) / name).string(), io::read_file(src));
  }
}

model::ModelConfig checkpoint_model_config(const CheckpointData& ck) {
  const std::string where = fmt::format("checkpoint step {} meta.json", ck.step);
  DSV3_CHECK(ck.meta.contains("model_config"), "{}: no model_config (not written by dsv3 train)",
             where);
  model::ModelConfig mc = model::parse_config(ck.meta["model_config"].dump(), where);
  // meta.json records the model twice: as model_config and as the train_config it came from.
  // Export reads the first and resume used to rebuild from the second; both now read
  // model_config, and it must be the model train_config describes.
  if (ck.meta.contains("train_config")) {
    const nlohmann::json want = TrainConfig::from_json(ck.meta["train_config"], where)
                                    .model_config(mc.vocab_size)
                                    .to_json();
    const nlohmann::json got = mc.to_json();
    if (got != want) {
      std::string key;
      for (auto& [k, v] : want.items())
        if (!got.contains(k) || got[k] != v) {
          key = k;
          break;
        }
      if (key.empty()) key = "(a key train_config does not set)";
      DSV3_FAIL(
          "{}: model_config differs from the model its train_config describes (first at '{}': {} "
          "vs {}): the checkpoint was edited or written by another build; refusing to guess "
          "which one is the model",
          where, key, got.contains(key) ? got[key].dump() : "missing",
          want.contains(key) ? want[key].dump() : "missing");
    }
  }
  return mc;
}

void restore_params(ParamStore& store, const CheckpointData& ck) {
  for (const auto& e : store.entries()) {
    auto it = ck.tensors.find("param." + e.name);
    DSV3_CHECK(it != ck.tensors.end(), "checkpoint step {}: tensor 'param.{}' is missing", ck.step,
               e.name);
    const Blob& b = it->second;
    DSV3_CHECK(b.shape == e.shape && b.dtype == DType::F32,
               "checkpoint step {}: tensor 'param.{}' has the wrong shape or dtype", ck.step,
               e.name);
    std::memcpy(store.params() + e.offset, b.bytes.data(), size_t(e.numel) * sizeof(float));
  }
}

ParamStore params_from_checkpoint(const CheckpointData& ck) {
  ParamStore store(checkpoint_model_config(ck));
  restore_params(store, ck);
  return store;
}

CheckpointData gather_sharded_checkpoint(const std::string& dir) {
  const int world = sharded_checkpoint_world(dir);
  DSV3_CHECK(world > 0, "checkpoint {} is not sharded", dir);
  CheckpointData ck = load_checkpoint_shard(dir, 0, world);
  for (int r = 1; r < world; ++r) {
    CheckpointData o = load_checkpoint_shard(dir, r, world);
    for (auto& [name, b] : o.tensors)
      if (name.starts_with("param.") && !ck.tensors.count(name)) ck.tensors[name] = std::move(b);
  }
  return ck;
}

namespace {
CheckpointData load_any_checkpoint(const std::string& dir) {
  return sharded_checkpoint_world(dir) > 0 ? gather_sharded_checkpoint(dir) : load_checkpoint(dir);
}
}  // namespace

int64_t export_checkpoint(const std::string& run_dir, int64_t step, const std::string& out,
                          DType dtype) {
  std::optional<CheckpointData> ck;
  if (step < 0) {
    const std::vector<int64_t> steps = list_checkpoints(run_dir);
    for (auto it = steps.rbegin(); it != steps.rend() && !ck; ++it) {
      try {
        ck = load_any_checkpoint(checkpoint_path(run_dir, *it));
      } catch (const Error& e) {
        log_warn(fmt::format("skipping checkpoint step {}: {}", *it, e.what()));
      }
    }
    DSV3_CHECK(ck, "no valid checkpoint in '{}'", checkpoints_dir(run_dir));
  } else {
    const std::string p = checkpoint_path(run_dir, step);
    DSV3_CHECK(fs::is_directory(p), "no checkpoint of step {}: '{}' does not exist", step, p);
    ck = load_any_checkpoint(p);
  }
  export_hf(params_from_checkpoint(*ck), true, out, dtype,
            (fs::path(run_dir) / "tokenizer").string());
  return ck->step;
}

}  // namespace dsv3::train
