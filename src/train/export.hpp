// From training checkpoints to Hugging Face DeepSeek-V3 directories: the end of `dsv3 train`
// (RUN_DIR/final) and `dsv3 export`. Training keeps one embedding and one head for the main model
// and the MTP module; the export writes the MTP copies from them (tie_mtp).
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.hpp"
#include "train/checkpoint.hpp"
#include "train/params.hpp"

namespace dsv3::train {

// Writes a Hugging Face DeepSeek-V3 dir (config.json, model.safetensors in `dtype`, tokenizer
// files copied from tokenizer_dir when non-empty). With tie_mtp, the MTP module's embedding and
// head copies are written from the main embedding and lm_head (training shares them).
void export_hf(const ParamStore& store, bool tie_mtp, const std::string& dir, DType dtype,
               const std::string& tokenizer_dir);

// Copies tokenizer.json (and tokenizer_config.json when present) from one dir to another,
// atomically, creating `to`.
void copy_tokenizer_files(const std::string& from, const std::string& to);

// The model config a checkpoint was trained with (meta "model_config"); throws naming the step
// when it is missing or invalid.
model::ModelConfig checkpoint_model_config(const CheckpointData& ck);

// Copies the "param.*" tensors of a checkpoint into store (shapes and dtypes checked).
void restore_params(ParamStore& store, const CheckpointData& ck);

// Rebuilds the parameter store of a checkpoint (meta "model_config" + "param.*" tensors).
ParamStore params_from_checkpoint(const CheckpointData& ck);

// A sharded checkpoint dir (a distributed run) in one process: rank 0's shard with the routed
// experts of every other shard added, so "param.*" holds the whole model.
CheckpointData gather_sharded_checkpoint(const std::string& dir);

// `dsv3 export`: checkpoint `step` (< 0: the newest valid one) of run_dir to an HF dir.
// Returns the step exported.
int64_t export_checkpoint(const std::string& run_dir, int64_t step, const std::string& out,
                          DType dtype);

}  // namespace dsv3::train
