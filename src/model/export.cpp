// HF checkpoint writer and the random initializer of `dsv3 init`; see export.hpp.
#include "model/export.hpp"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/memory.hpp"
#include "core/quant.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "io/safetensors.hpp"
#include "model/footprint.hpp"

namespace dsv3::model {

namespace {
int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}
}  // namespace

void random_param_fill(const ParamSpec& spec, float* dst, uint64_t seed) {
  Rng rng(seed ^ fnv1a(spec.name));
  const int64_t n = numel(spec.shape);
  switch (spec.role) {
    case ParamRole::Linear: {
      double std = (spec.residual_out ? 0.3 : 1.0) / std::sqrt(double(spec.shape[1]));
      for (int64_t i = 0; i < n; ++i) dst[i] = float(rng.normal() * std);
      return;
    }
    case ParamRole::Router: {
      double std = 1.0 / std::sqrt(double(spec.shape[1]));
      for (int64_t i = 0; i < n; ++i) dst[i] = float(rng.normal() * std);
      return;
    }
    case ParamRole::Embedding:
    case ParamRole::Head: {
      double std = spec.role == ParamRole::Head ? 1.0 / std::sqrt(double(spec.shape[1])) : 0.1;
      for (int64_t i = 0; i < n; ++i) dst[i] = float(rng.normal() * std);
      return;
    }
    case ParamRole::Norm:
      for (int64_t i = 0; i < n; ++i) dst[i] = 1.0f;
      return;
    case ParamRole::RouterBias:
      for (int64_t i = 0; i < n; ++i) dst[i] = 0.0f;
      return;
  }
}

void save_hf_checkpoint(const std::string& dir, const ModelConfig& c, const ParamFill& fill,
                        const ExportOptions& opt) {
  namespace fs = std::filesystem;
  DSV3_CHECK(opt.dtype == DType::BF16 || opt.dtype == DType::F32 || opt.dtype == DType::F8_E4M3,
             "export dtype must be bf16, f32 or fp8, got {}", dtype_name(opt.dtype));
  check_fits_in_memory(
      checkpoint_memory_bytes(c, opt.dtype),
      fmt::format("a {} checkpoint of {:.3g} parameters", dtype_name(opt.dtype), param_count(c)));
  fs::create_directories(dir);
  ModelConfig out = c;
  out.quantization.enabled = opt.dtype == DType::F8_E4M3;
  out.torch_dtype = opt.dtype == DType::F32 ? "float32" : "bfloat16";

  auto specs = param_table(c);
  std::vector<io::SafetensorsWriter> shards(1);
  std::vector<std::pair<std::string, size_t>> where;  // tensor -> shard
  int64_t shard_bytes = 0;
  std::vector<float> buf;
  auto add = [&](const std::string& name, DType dt, const std::vector<int64_t>& shape,
                 const void* data) {
    int64_t bytes = numel(shape) * int64_t(dtype_size(dt));
    if (shard_bytes > 0 && shard_bytes + bytes > opt.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().add(name, dt, shape, data);
    where.emplace_back(name, shards.size() - 1);
    shard_bytes += bytes;
  };
  for (const auto& s : specs) {
    const int64_t n = numel(s.shape);
    buf.resize(size_t(n));
    fill(s, buf.data());
    if (s.role == ParamRole::RouterBias || opt.dtype == DType::F32) {
      add(s.name, DType::F32, s.shape, buf.data());
    } else if (opt.dtype == DType::F8_E4M3 && s.fp8) {
      const int64_t rows = s.shape[0], cols = s.shape[1];
      std::vector<int64_t> sshape = {(rows + 127) / 128, (cols + 127) / 128};
      std::vector<uint8_t> codes(static_cast<size_t>(n));
      std::vector<float> scale(size_t(sshape[0] * sshape[1]));
      fp8_block_quantize(codes.data(), scale.data(), buf.data(), rows, cols);
      add(s.name, DType::F8_E4M3, s.shape, codes.data());
      add(s.name + "_scale_inv", DType::F32, sshape, scale.data());
    } else {
      std::vector<uint16_t> h(static_cast<size_t>(n));
      from_f32(h.data(), buf.data(), DType::BF16, size_t(n));
      add(s.name, DType::BF16, s.shape, h.data());
    }
  }
  // Remove files of an earlier export in the same directory so loaders see one layout.
  for (const char* stale : {"model.safetensors", "model.safetensors.index.json"})
    fs::remove(fs::path(dir) / stale);
  if (shards.size() == 1) {
    shards[0].set_metadata("format", "pt");
    shards[0].write((fs::path(dir) / "model.safetensors").string());
  } else {
    nlohmann::json index;
    index["metadata"] = nlohmann::json::object();
    const size_t k = shards.size();
    auto fname = [&](size_t i) {
      char b[64];
      std::snprintf(b, sizeof b, "model-%05zu-of-%05zu.safetensors", i + 1, k);
      return std::string(b);
    };
    for (size_t i = 0; i < k; ++i) {
      shards[i].set_metadata("format", "pt");
      shards[i].write((fs::path(dir) / fname(i)).string());
    }
    for (const auto& [name, i] : where) index["weight_map"][name] = fname(i);
    io::atomic_write((fs::path(dir) / "model.safetensors.index.json").string(), index.dump(2));
  }
  save_config(out, (fs::path(dir) / "config.json").string());
}

}  // namespace dsv3::model
