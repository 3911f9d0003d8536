// Training checkpoints: RUN_DIR/checkpoints/step-<N>/ holds a set of named tensors (weights,
// optimizer moments, routing biases, RNG state, data position) in `tensors.safetensors`, a JSON
// blob (config, train options, step) in `meta.json`, and `manifest.json` (sizes and 64-bit
// checksums of both), written last. A checkpoint is built in a temp dir and renamed into place,
// so a killed run leaves either a complete checkpoint or a `.tmp-*` dir that the next load
// removes. Format: docs/training-runs.md.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/hash.hpp"
#include "dist/comm.hpp"

namespace dsv3::train {

using dsv3::hash64;
using dsv3::Hasher64;
// Hash of a whole file's bytes; throws naming the file when it cannot be read.
uint64_t hash_file(const std::string& path);
std::string hex64(uint64_t v);

// One tensor of a checkpoint: dtype, shape and the raw little-endian bytes (owned).
struct Blob {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const;
  // Copies numel(shape) elements of `dtype` from `data`.
  static Blob of(DType dtype, std::vector<int64_t> shape, const void* data);
  static Blob f32(const std::vector<float>& v) {
    return of(DType::F32, {int64_t(v.size())}, v.data());
  }
  static Blob i64(const std::vector<int64_t>& v) {
    return of(DType::I64, {int64_t(v.size())}, v.data());
  }
  // Widens F32/BF16 to float, I32/I64 to int64; throws on other dtypes. `what` names the blob in
  // the error.
  std::vector<float> to_f32(const std::string& what = "blob") const;
  std::vector<int64_t> to_i64(const std::string& what = "blob") const;
};

struct CheckpointData {
  std::map<std::string, Blob> tensors;
  nlohmann::json meta = nlohmann::json::object();
  int64_t step = 0;
};

// RUN_DIR/checkpoints and RUN_DIR/checkpoints/step-<step>.
std::string checkpoints_dir(const std::string& run_dir);
std::string checkpoint_path(const std::string& run_dir, int64_t step);

// Writes RUN_DIR/checkpoints/step-<data.step>/ atomically (replacing one of the same step), then
// deletes all but the newest `keep_last` checkpoints (keep_last <= 0 keeps all). meta.json gets
// "step" set to data.step.
void save_checkpoint(const std::string& run_dir, const CheckpointData& data, int keep_last);

// Reads and verifies one checkpoint dir (manifest present, every file's size and checksum,
// safetensors header, meta step == dir step); throws dsv3::Error saying what is wrong.
CheckpointData load_checkpoint(const std::string& dir);

// Steps of the complete-looking step-<N> dirs (not verified), ascending.
std::vector<int64_t> list_checkpoints(const std::string& run_dir);

// Removes leftover `.tmp-*` dirs of interrupted saves, then loads the newest checkpoint that
// verifies. Every skipped (corrupt, partial) checkpoint and removed temp dir adds a line to
// *warnings when given (the caller reports them), else to the log. Returns nullopt when no
// checkpoint verifies.
std::optional<CheckpointData> load_latest_checkpoint(const std::string& run_dir,
                                                     std::vector<std::string>* warnings = nullptr);

// Sharded checkpoints of a distributed run (docs/distributed.md): step-<N>/rank-<r>/ holds rank
// r's shard in the one-process format above (its parameters: the replicated ones and its
// experts; its ZeRO-1 optimizer shard; sampler and RNG), and step-<N>/manifest.json, written by
// rank 0 after a barrier once every shard is on disk, lists the world size, the layout and each
// shard manifest's checksum. The dir is built under a temp name and renamed into place, so a job
// killed at any moment leaves either the whole checkpoint or a `.tmp-*` dir. Collective.
void save_checkpoint_sharded(const std::string& run_dir, const CheckpointData& shard,
                             dist::Comm& comm, const nlohmann::json& layout, int keep_last);
std::string shard_dir_name(int rank);  // "rank-<r>"
// World size of a sharded checkpoint dir, or 0 when it is not one.
int sharded_checkpoint_world(const std::string& dir);
// Verifies the sharded manifest (format, world size, the shard's checksum) and loads rank's shard.
CheckpointData load_checkpoint_shard(const std::string& dir, int rank, int world);
// Collective: the newest step whose shards verify on every rank (rank 0 removes temp dirs
// first); skipped steps are reported in *warnings.
std::optional<CheckpointData> load_latest_checkpoint_sharded(const std::string& run_dir,
                                                             dist::Comm& comm,
                                                             std::vector<std::string>* warnings);

}  // namespace dsv3::train
