// Implementation of checkpoint.hpp: the 64-bit hash, Blob helpers, and the atomic
// save / verified load of RUN_DIR/checkpoints/step-<N>/.
#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/log.hpp"
#include "io/file.hpp"
#include "io/safetensors.hpp"

namespace dsv3::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kTensorsFile = "tensors.safetensors";
constexpr const char* kMetaFile = "meta.json";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kFormat = "dsv3-checkpoint";
constexpr const char* kShardedFormat = "dsv3-checkpoint-sharded";
constexpr int kVersion = 1;

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Parses "step-<N>"; returns -1 for any other name.
int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t(1) << 58)) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

// Renames `dir` to a temp name first, so a kill during removal leaves a `.tmp-*` dir (cleaned on
// the next load) rather than a half-deleted checkpoint under its real name.
void remove_dir(const fs::path& dir) {
  fs::path trash = dir.parent_path() /
                   (".tmp-del-" + dir.filename().string() + "-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::rename(dir, trash, ec);
  fs::remove_all(ec ? dir : trash, ec);
}

}  // namespace

uint64_t hash_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f.good(), "cannot open {}: {}", path, std::strerror(errno));
  Hasher64 h;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    h.update(buf.data(), size_t(f.gcount()));
  }
  DSV3_CHECK(f.eof(), "error reading {}", path);
  return h.digest();
}

std::string hex64(uint64_t v) {
  return fmt::format("{:016x}", v);
}

int64_t Blob::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Blob Blob::of(DType dtype, std::vector<int64_t> shape, const void* data) {
  Blob b;
  b.dtype = dtype;
  b.shape = std::move(shape);
  for (int64_t d : b.shape) DSV3_CHECK(d >= 0, "Blob: negative dimension {}", d);
  size_t n = size_t(b.numel()) * dtype_size(dtype);
  auto* p = static_cast<const uint8_t*>(data);
  b.bytes.assign(p, p + n);
  return b;
}

std::vector<float> Blob::to_f32(const std::string& what) const {
  DSV3_CHECK(dtype == DType::F32 || dtype == DType::BF16, "{}: dtype {} is not F32 or BF16", what,
             dtype_name(dtype));
  DSV3_CHECK(bytes.size() == size_t(numel()) * dtype_size(dtype),
             "{}: {} bytes for {} elements of {}", what, bytes.size(), numel(), dtype_name(dtype));
  std::vector<float> out(static_cast<size_t>(numel()));
  dsv3::to_f32(out.data(), bytes.data(), dtype, out.size());
  return out;
}

std::vector<int64_t> Blob::to_i64(const std::string& what) const {
  DSV3_CHECK(dtype == DType::I32 || dtype == DType::I64, "{}: dtype {} is not I32 or I64", what,
             dtype_name(dtype));
  DSV3_CHECK(bytes.size() == size_t(numel()) * dtype_size(dtype),
             "{}: {} bytes for {} elements of {}", what, bytes.size(), numel(), dtype_name(dtype));
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (dtype == DType::I64) {
      std::memcpy(&out[i], bytes.data() + 8 * i, 8);
    } else {
      int32_t v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      out[i] = v;
    }
  }
  return out;
}

std::string checkpoints_dir(const std::string& run_dir) {
  return (fs::path(run_dir) / "checkpoints").string();
}

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  return (fs::path(checkpoints_dir(run_dir)) / ("step-" + std::to_string(step))).string();
}

namespace {

// Writes tensors.safetensors, meta.json and manifest.json (last) of `data` into dir.
void write_checkpoint_files(const fs::path& dir, const CheckpointData& data) {
  io::SafetensorsWriter w;
  for (const auto& [name, b] : data.tensors) {
    DSV3_CHECK(b.bytes.size() == size_t(b.numel()) * dtype_size(b.dtype),
               "checkpoint tensor '{}': {} bytes for shape of {} elements of {}", name,
               b.bytes.size(), b.numel(), dtype_name(b.dtype));
    w.add(name, b.dtype, b.shape, b.bytes.data());
  }
  w.set_metadata("format", kFormat);
  w.set_metadata("step", std::to_string(data.step));
  w.write((dir / kTensorsFile).string());

  json meta = data.meta.is_object() ? data.meta : json{{"meta", data.meta}};
  meta["step"] = data.step;
  io::atomic_write((dir / kMetaFile).string(), meta.dump(2) + "\n");

  // Checksums are of the bytes as they lie on disk, read back after the fsync.
  json files = json::object();
  for (const char* f : {kTensorsFile, kMetaFile}) {
    std::string p = (dir / f).string();
    files[f] = {{"size", fs::file_size(p)}, {"hash64", hex64(hash_file(p))}};
  }
  json manifest = {
      {"format", kFormat}, {"version", kVersion}, {"step", data.step}, {"files", files}};
  io::atomic_write((dir / kManifestFile).string(), manifest.dump(2) + "\n");
  fsync_dir(dir);
}

// Renames the complete temp dir to step-<step> and prunes old checkpoints.
void commit_checkpoint(const std::string& run_dir, const fs::path& tmp, int64_t step,
                       int keep_last) {
  const fs::path root = checkpoints_dir(run_dir), final_dir = checkpoint_path(run_dir, step);
  // Re-saving a step swaps the dirs atomically where the filesystem can, so no moment passes
  // without a complete step-N; the old one then lies under the temp name and is removed.
  std::error_code ec;
  if (fs::exists(final_dir) &&
      ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    fsync_dir(root);
    fs::remove_all(tmp, ec);
  } else {
    if (fs::exists(final_dir)) remove_dir(final_dir);
    fs::rename(tmp, final_dir, ec);
    DSV3_CHECK(!ec, "cannot rename {} to {}: {}", tmp.string(), final_dir.string(), ec.message());
  }
  fsync_dir(root);

  if (keep_last > 0) {
    std::vector<int64_t> steps = list_checkpoints(run_dir);
    for (size_t i = 0; i + size_t(keep_last) < steps.size(); ++i)
      remove_dir(checkpoint_path(run_dir, steps[i]));
    fsync_dir(root);
  }
}

}  // namespace

void save_checkpoint(const std::string& run_dir, const CheckpointData& data, int keep_last) {
  DSV3_CHECK(data.step >= 0, "save_checkpoint: negative step {}", data.step);
  fs::path root = checkpoints_dir(run_dir);
  fs::create_directories(root);
  fs::path tmp =
      root / (".tmp-step-" + std::to_string(data.step) + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  write_checkpoint_files(tmp, data);
  commit_checkpoint(run_dir, tmp, data.step, keep_last);
}

void save_checkpoint_sharded(const std::string& run_dir, const CheckpointData& shard,
                             dist::Comm& comm, const nlohmann::json& layout, int keep_last) {
  DSV3_CHECK(shard.step >= 0, "save_checkpoint_sharded: negative step {}", shard.step);
  const fs::path root = checkpoints_dir(run_dir);
  // One temp dir for the job (every rank derives its name from the step alone).
  const fs::path tmp = root / (".tmp-step-" + std::to_string(shard.step) + "-sharded");
  if (comm.rank() == 0) {
    fs::create_directories(root);
    fs::remove_all(tmp);
    fs::create_directory(tmp);
  }
  comm.barrier();
  const fs::path mine = tmp / shard_dir_name(comm.rank());
  fs::create_directory(mine);
  write_checkpoint_files(mine, shard);
  comm.barrier();  // every shard is complete on disk
  if (comm.rank() == 0) {
    json shards = json::object();
    for (int r = 0; r < comm.size(); ++r) {
      const std::string m = (tmp / shard_dir_name(r) / kManifestFile).string();
      shards[shard_dir_name(r)] = {{"manifest_hash64", hex64(hash_file(m))}};
    }
    json manifest = {{"format", kShardedFormat}, {"version", kVersion}, {"step", shard.step},
                     {"world", comm.size()},     {"layout", layout},    {"shards", shards}};
    io::atomic_write((tmp / kManifestFile).string(), manifest.dump(2) + "\n");
    fsync_dir(tmp);
    commit_checkpoint(run_dir, tmp, shard.step, keep_last);
  }
  comm.barrier();  // the checkpoint is committed before any rank goes on
}

namespace {
// Typed fields of manifest.json: a missing key or one of another JSON type reads as `dflt`, so
// the checks below refuse it by name (json::value() would throw the library's type_error, found
// by fuzz/fuzz_checkpoint_manifest).
std::string manifest_string(const json& o, const char* key) {
  return o.is_object() && o.contains(key) && o[key].is_string() ? o[key].get<std::string>() : "";
}
int64_t manifest_int(const json& o, const char* key, int64_t dflt) {
  return o.is_object() && o.contains(key) && o[key].is_number_integer() ? o[key].get<int64_t>()
                                                                        : dflt;
}
}  // namespace

CheckpointData load_checkpoint(const std::string& dir) {
  fs::path d(dir);
  std::string mpath = (d / kManifestFile).string();
  DSV3_CHECK(fs::is_regular_file(mpath), "checkpoint {}: {} is missing (partial write?)", dir,
             kManifestFile);
  json manifest;
  try {
    manifest = json::parse(io::read_file(mpath));
  } catch (const json::exception& e) {
    DSV3_FAIL("checkpoint {}: {} is not valid JSON: {}", dir, kManifestFile, e.what());
  }
  DSV3_CHECK(manifest_string(manifest, "format") != kShardedFormat,
             "checkpoint {} is sharded over {} ranks: resume it under mpirun -np {} (dsv3 export "
             "reads it in one process)",
             dir, manifest_int(manifest, "world", 0), manifest_int(manifest, "world", 0));
  DSV3_CHECK(manifest.is_object() && manifest_string(manifest, "format") == kFormat,
             "checkpoint {}: {} has no \"format\": \"{}\"", dir, kManifestFile, kFormat);
  DSV3_CHECK(manifest_int(manifest, "version", 0) == kVersion,
             "checkpoint {}: format version {} is not supported (expected {})", dir,
             manifest.contains("version") ? manifest["version"].dump() : "(none)", kVersion);
  const json& files = manifest["files"];
  DSV3_CHECK(files.is_object(), "checkpoint {}: {} has no \"files\" object", dir, kManifestFile);
  for (const char* f : {kTensorsFile, kMetaFile})
    DSV3_CHECK(files.contains(f), "checkpoint {}: {} does not list {}", dir, kManifestFile, f);
  for (const auto& [name, info] : files.items()) {
    DSV3_CHECK(name.find('/') == std::string::npos && name != ".." && info.is_object(),
               "checkpoint {}: bad manifest entry '{}'", dir, name);
    std::string p = (d / name).string();
    DSV3_CHECK(fs::is_regular_file(p), "checkpoint {}: {} is missing", dir, name);
    uint64_t size = fs::file_size(p);
    const int64_t want_size = manifest_int(info, "size", -1);
    DSV3_CHECK(int64_t(size) == want_size,
               "checkpoint {}: {} has {} bytes, the manifest says {} (truncated?)", dir, name, size,
               want_size);
    std::string got = hex64(hash_file(p)), want = manifest_string(info, "hash64");
    DSV3_CHECK(got == want, "checkpoint {}: checksum of {} is {}, the manifest says {} (corrupt)",
               dir, name, got, want);
  }

  CheckpointData out;
  try {
    out.meta = json::parse(io::read_file((d / kMetaFile).string()));
  } catch (const json::exception& e) {
    DSV3_FAIL("checkpoint {}: {} is not valid JSON: {}", dir, kMetaFile, e.what());
  }
  DSV3_CHECK(
      out.meta.is_object() && out.meta.contains("step") && out.meta["step"].is_number_integer(),
      "checkpoint {}: {} has no integer \"step\"", dir, kMetaFile);
  out.step = out.meta["step"].get<int64_t>();
  int64_t dir_step = step_of(d.filename().string());
  DSV3_CHECK(dir_step < 0 || dir_step == out.step, "checkpoint {}: {} says step {}", dir, kMetaFile,
             out.step);
  DSV3_CHECK(manifest_int(manifest, "step", -1) == out.step,
             "checkpoint {}: manifest step {} differs from meta step {}", dir,
             manifest_int(manifest, "step", -1), out.step);

  auto st = io::SafetensorsFile::open((d / kTensorsFile).string());
  for (const auto& t : st->tensors()) out.tensors[t.name] = Blob::of(t.dtype, t.shape, t.data);
  return out;
}

std::vector<int64_t> list_checkpoints(const std::string& run_dir) {
  std::vector<int64_t> steps;
  fs::path root = checkpoints_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return steps;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    int64_t s = step_of(e.path().filename().string());
    if (s >= 0 && e.is_directory()) steps.push_back(s);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::optional<CheckpointData> load_latest_checkpoint(const std::string& run_dir,
                                                     std::vector<std::string>* warnings) {
  // To the caller's list when given (it reports them: Trainer::run logs its warnings), else to
  // the log; not both, or a resume prints each warning twice.
  auto warn = [&](const std::string& m) {
    if (warnings)
      warnings->push_back(m);
    else
      log_warn(m);
  };
  fs::path root = checkpoints_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  std::vector<fs::path> temps;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) temps.push_back(e.path());
  for (const auto& t : temps) {
    warn(fmt::format("removing {}: left by an interrupted checkpoint write", t.string()));
    fs::remove_all(t, ec);
  }

  std::vector<int64_t> steps = list_checkpoints(run_dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    std::string dir = checkpoint_path(run_dir, *it);
    try {
      return load_checkpoint(dir);
    } catch (const Error& e) {
      std::string next =
          std::next(it) != steps.rend() ? "step-" + std::to_string(*std::next(it)) : "none left";
      warn(fmt::format("skipping corrupt or partial checkpoint {} ({}); falling back to {}", dir,
                       e.what(), next));
    }
  }
  return std::nullopt;
}

std::string shard_dir_name(int rank) {
  return "rank-" + std::to_string(rank);
}

int sharded_checkpoint_world(const std::string& dir) {
  const std::string mpath = (fs::path(dir) / kManifestFile).string();
  if (!fs::is_regular_file(mpath)) return 0;
  json m = json::parse(io::read_file(mpath), nullptr, false);
  if (m.is_discarded() || manifest_string(m, "format") != kShardedFormat) return 0;
  return int(manifest_int(m, "world", 0));
}

CheckpointData load_checkpoint_shard(const std::string& dir, int rank, int world) {
  const fs::path d(dir);
  const std::string mpath = (d / kManifestFile).string();
  DSV3_CHECK(fs::is_regular_file(mpath), "checkpoint {}: {} is missing (partial write?)", dir,
             kManifestFile);
  json m = json::parse(io::read_file(mpath), nullptr, false);
  DSV3_CHECK(!m.is_discarded() && m.is_object(), "checkpoint {}: {} is not valid JSON", dir,
             kManifestFile);
  DSV3_CHECK(manifest_string(m, "format") == kShardedFormat,
             "checkpoint {} was written by one process: resume it without mpirun (or with -np 1)",
             dir);
  const int64_t w = manifest_int(m, "world", 0);
  DSV3_CHECK(w == world,
             "checkpoint {} is sharded over {} ranks but this job has {}: resume it with mpirun "
             "-np {} (the same --dp/--ep layout)",
             dir, w, world, w);
  DSV3_CHECK(0 <= rank && rank < world, "checkpoint {}: no shard for rank {}", dir, rank);
  const std::string name = shard_dir_name(rank);
  const json& shards = m["shards"];
  DSV3_CHECK(shards.is_object() && shards.contains(name), "checkpoint {}: {} does not list {}", dir,
             kManifestFile, name);
  const std::string want = manifest_string(shards[name], "manifest_hash64");
  const std::string shard_manifest = (d / name / kManifestFile).string();
  DSV3_CHECK(fs::is_regular_file(shard_manifest), "checkpoint {}: {} is missing", dir,
             name + "/" + kManifestFile);
  const std::string got = hex64(hash_file(shard_manifest));
  DSV3_CHECK(got == want, "checkpoint {}: checksum of {}/{} is {}, the manifest says {}", dir, name,
             kManifestFile, got, want);
  CheckpointData ck = load_checkpoint((d / name).string());
  DSV3_CHECK(ck.step == manifest_int(m, "step", -1) && step_of(d.filename().string()) == ck.step,
             "checkpoint {}: shard {} is of step {}", dir, name, ck.step);
  return ck;
}

std::optional<CheckpointData> load_latest_checkpoint_sharded(const std::string& run_dir,
                                                             dist::Comm& comm,
                                                             std::vector<std::string>* warnings) {
  const fs::path root = checkpoints_dir(run_dir);
  std::error_code ec;
  if (comm.rank() == 0 && fs::is_directory(root, ec)) {
    std::vector<fs::path> temps;
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.path().filename().string().rfind(".tmp-", 0) == 0) temps.push_back(e.path());
    for (const auto& t : temps) {
      warnings->push_back(
          fmt::format("removing {}: left by an interrupted checkpoint write", t.string()));
      fs::remove_all(t, ec);
    }
  }
  comm.barrier();
  // Every rank lists the same steps; the newest one whose every shard verifies is taken.
  std::vector<int64_t> steps = list_checkpoints(run_dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const std::string dir = checkpoint_path(run_dir, *it);
    std::optional<CheckpointData> ck;
    std::string err;
    try {
      ck = load_checkpoint_shard(dir, comm.rank(), comm.size());
    } catch (const Error& e) {
      err = e.what();
    }
    int32_t ok = ck ? 1 : 0;
    comm.all_reduce(&ok, 1, DType::I32, dist::ReduceOp::Min);
    if (ok) return ck;
    if (!err.empty() && warnings)
      warnings->push_back(
          fmt::format("rank {}: skipping checkpoint {} ({})", comm.rank(), dir, err));
    else if (warnings)
      warnings->push_back(
          fmt::format("skipping checkpoint {}: another rank's shard does not verify", dir));
  }
  return std::nullopt;
}

}  // namespace dsv3::train
