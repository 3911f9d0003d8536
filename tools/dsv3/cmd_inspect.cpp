// `dsv3 inspect PATH [--stats]`: lists the tensors of a .safetensors file, of a Hugging Face
// checkpoint directory (model.safetensors or shards through model.safetensors.index.json) or of a
// training checkpoint directory (RUN_DIR/checkpoints/step-N/tensors.safetensors): name, dtype,
// shape and bytes per tensor, then totals by dtype. --stats adds min/max/mean/std of each float
// tensor; an F8_E4M3 weight with its `<name>_scale_inv` (the DeepSeek-V3 release layout) is
// summarised dequantized, as the model sees it.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "command.hpp"
#include "core/error.hpp"
#include "core/quant.hpp"
#include "io/safetensors.hpp"

namespace {

using dsv3::DType;
using dsv3::io::TensorInfo;
using dsv3::io::TensorStore;

struct InspectArgs {
  std::string path;
  bool stats = false;
};

bool is_float(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F8_E4M3 ||
         t == DType::F8_E5M2 || t == DType::F64;
}

// The tensor's values as the model uses them: FP8 block-scaled weights are dequantized when their
// scale is present with the expected shape. `note` says which.
std::vector<float> effective_values(const TensorStore& st, const TensorInfo& t, std::string* note) {
  std::vector<float> v = dsv3::io::read_f32(t);
  const TensorInfo* s = st.find(t.name + "_scale_inv");
  if (t.dtype != DType::F8_E4M3 || !s || t.shape.size() != 2) return v;
  const int64_t rows = t.shape[0], cols = t.shape[1];
  DSV3_CHECK(s->dtype == DType::F32 &&
                 s->shape == std::vector<int64_t>({(rows + 127) / 128, (cols + 127) / 128}),
             "{}: tensor '{}' has dtype {} and shape {}, expected F32 [{}, {}] for the block "
             "scales of '{}' {}",
             s->file, s->name, dsv3::dtype_name(s->dtype), s->shape_str(), (rows + 127) / 128,
             (cols + 127) / 128, t.name, t.shape_str());
  std::vector<float> scale = dsv3::io::read_f32(*s);
  std::vector<uint8_t> codes(t.data, t.data + t.nbytes);
  dsv3::fp8_block_dequantize(v.data(), codes.data(), scale.data(), rows, cols);
  *note = " (dequantized)";
  return v;
}

std::string stats_str(const std::vector<float>& v) {
  double lo = INFINITY, hi = -INFINITY, sum = 0, sum2 = 0;
  size_t finite = 0;
  for (float x : v) {
    if (!std::isfinite(x)) continue;
    lo = std::min<double>(lo, x);
    hi = std::max<double>(hi, x);
    sum += x;
    ++finite;
  }
  if (finite == 0) return fmt::format("no finite values ({} non-finite)", v.size());
  const double mean = sum / double(finite);
  for (float x : v)
    if (std::isfinite(x)) sum2 += (x - mean) * (x - mean);
  std::string s = fmt::format("min {:.6g} max {:.6g} mean {:.6g} std {:.6g}", lo, hi, mean,
                              std::sqrt(sum2 / double(finite)));
  if (finite != v.size()) s += fmt::format(" ({} non-finite)", v.size() - finite);
  return s;
}

// A file, a Hugging Face dir, or a training checkpoint dir (its tensors.safetensors).
TensorStore open_path(const std::string& path) {
  namespace fs = std::filesystem;
  DSV3_CHECK(fs::exists(path), "{}: no such file or directory", path);
  if (!fs::is_directory(path)) return TensorStore::open_file(path);
  const fs::path d(path);
  if (fs::exists(d / "model.safetensors") || fs::exists(d / "model.safetensors.index.json"))
    return TensorStore::open_dir(path);
  DSV3_CHECK(fs::exists(d / "tensors.safetensors"),
             "{}: neither model.safetensors nor model.safetensors.index.json (a Hugging Face "
             "checkpoint) nor tensors.safetensors (a training checkpoint, RUN_DIR/checkpoints/"
             "step-N)",
             path);
  return TensorStore::open_file((d / "tensors.safetensors").string());
}

void run_inspect(const InspectArgs& a) {
  const TensorStore st = open_path(a.path);
  const std::vector<std::string> names = st.names();

  size_t name_w = 4, shape_w = 5;
  for (const auto& n : names) {
    name_w = std::max(name_w, n.size());
    shape_w = std::max(shape_w, st.get(n).shape_str().size());
  }
  fmt::print("{:<{}}  {:<7}  {:<{}}  {:>12}\n", "name", name_w, "dtype", "shape", shape_w, "bytes");

  struct Total {
    size_t count = 0, bytes = 0;
  };
  Total all;
  std::map<std::string, Total> by_dtype;
  for (const auto& n : names) {
    const TensorInfo& t = st.get(n);
    const std::string dt(dsv3::dtype_name(t.dtype));
    std::string line = fmt::format("{:<{}}  {:<7}  {:<{}}  {:>12}", n, name_w, dt, t.shape_str(),
                                   shape_w, t.nbytes);
    if (a.stats && is_float(t.dtype)) {
      std::string note;
      std::vector<float> v = effective_values(st, t, &note);
      line += "  " + (v.empty() ? std::string("empty") : stats_str(v)) + note;
    }
    fmt::print("{}\n", line);
    all.count += 1;
    all.bytes += t.nbytes;
    by_dtype[dt].count += 1;
    by_dtype[dt].bytes += t.nbytes;
  }
  fmt::print("{}: {} tensors, {} bytes ({:.2f} MiB)\n", st.where(), all.count, all.bytes,
             double(all.bytes) / (1 << 20));
  for (const auto& [dt, tot] : by_dtype)
    fmt::print("  {:<7} {:>6} tensors {:>14} bytes\n", dt, tot.count, tot.bytes);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  auto* sub = app.add_subcommand("inspect", "List the tensors of a safetensors file or checkpoint");
  sub->add_option("path", a->path,
                  "a .safetensors file, a Hugging Face checkpoint directory or a training "
                  "checkpoint directory (RUN_DIR/checkpoints/step-N)")
      ->required();
  sub->add_flag("--stats", a->stats, "also print min/max/mean/std of every float tensor");
  sub->callback([a] { run_inspect(*a); });
}

}  // namespace
DSV3_COMMAND(setup);
