// Model::load: a Hugging Face checkpoint directory bound to the model's weight view through the
// one binding of weights.hpp. Every shape and dtype is validated against the parameter table;
// BF16 / F32 / FP8 (with its 128×128 `weight_scale_inv` blocks) linear weights are used as
// stored, F16 ones converted once to F32; norms and the router are read into FP32.
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/finite.hpp"
#include "model/model.hpp"

namespace dsv3::model {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Binds W<float> to the tensors of a checkpoint.
class StoreBinder {
 public:
  StoreBinder(const io::TensorStore& s, cpu::Compute c, std::vector<std::vector<uint8_t>>& owned)
      : store_(s), compute_(c), owned_(owned) {}

  cpu::LinearWeight lin(const std::string& n, int64_t rows, int64_t cols, ParamFlags,
                        const std::string& fallback = {}) {
    return cpu::LinearWeight(view(resolve(n, fallback), rows, cols), compute_);
  }

  const float* vec(const std::string& n, const std::vector<int64_t>& shape, ParamFlags) {
    std::vector<float> v;
    if (shape.size() == 2) {  // the router: any stored dtype, dequantized
      v = cpu::dequantize(view(n, shape[0], shape[1]));
    } else {
      const io::TensorInfo& t = store_.get(n, shape);
      check_float(t);
      v = io::read_f32(t);
    }
    owned_.emplace_back(v.size() * sizeof(float));
    std::copy(v.begin(), v.end(), reinterpret_cast<float*>(owned_.back().data()));
    return reinterpret_cast<const float*>(owned_.back().data());
  }

  cpu::WeightView table(const std::string& n, int64_t rows, int64_t cols, ParamFlags,
                        const std::string& fallback) {
    const io::TensorInfo& t = store_.get(resolve(n, fallback), {rows, cols});
    check_float(t);
    return {t.dtype, rows, cols, t.data, nullptr};
  }

 private:
  // The MTP module's copies of the shared embedding and head may be missing from a checkpoint;
  // a copy equal to the shared tensor (a tied model's export: `dsv3 train`) binds the shared
  // one, so that a speculative step's MTP head reads the main head's weights, still in cache.
  std::string resolve(const std::string& n, const std::string& fallback) const {
    if (fallback.empty()) return n;
    const io::TensorInfo* t = store_.find(n);
    if (!t) return fallback;
    const io::TensorInfo* f = store_.find(fallback);
    const bool same = f && f->dtype == t->dtype && f->shape == t->shape && f->nbytes == t->nbytes &&
                      std::memcmp(f->data, t->data, t->nbytes) == 0;
    return same ? fallback : n;
  }

  static void check_float(const io::TensorInfo& t) {
    DSV3_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
               "{}: tensor '{}' has dtype {}, expected F32, BF16 or F16", t.file, t.name,
               dtype_name(t.dtype));
  }

  cpu::WeightView view(const std::string& n, int64_t rows, int64_t cols) {
    const io::TensorInfo& t = store_.get(n, {rows, cols});
    cpu::WeightView v{t.dtype, rows, cols, t.data, nullptr};
    switch (t.dtype) {
      case DType::F32:
      case DType::BF16:
        return v;
      case DType::F8_E4M3: {
        const io::TensorInfo& s =
            store_.get(n + "_scale_inv", {ceil_div(rows, 128), ceil_div(cols, 128)});
        DSV3_CHECK(s.dtype == DType::F32, "{}: tensor '{}' has dtype {}, expected F32", s.file,
                   s.name, dtype_name(s.dtype));
        v.scale_inv = reinterpret_cast<const float*>(s.data);
        return v;
      }
      case DType::F16: {  // converted once to F32
        owned_.emplace_back(size_t(rows * cols) * 4);
        to_f32(reinterpret_cast<float*>(owned_.back().data()), t.data, t.dtype,
               size_t(rows * cols));
        v.dtype = DType::F32;
        v.data = owned_.back().data();
        return v;
      }
      default:
        DSV3_FAIL("{}: tensor '{}' has dtype {}, expected F32, BF16, F16 or F8_E4M3", t.file, n,
                  dtype_name(t.dtype));
    }
  }

  const io::TensorStore& store_;
  cpu::Compute compute_;
  std::vector<std::vector<uint8_t>>& owned_;
};

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opt) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = load_config(dir);
  const ModelConfig& c = m->config_;
  m->compute_ = opt.compute;
  m->store_ = io::TensorStore::open_dir(dir, opt.residency);
  io::check_finite(m->store_);  // one pass: a NaN/Inf weight is refused by name, not computed on
  int64_t mtp = 0;
  if (opt.load_mtp && c.num_nextn_predict_layers > 0) {
    if (m->store_.find(layer_prefix(c.num_hidden_layers) + "eh_proj.weight"))
      mtp = c.num_nextn_predict_layers;
    else
      log_warn(dir + ": config has num_nextn_predict_layers = " +
               std::to_string(c.num_nextn_predict_layers) +
               " but the checkpoint has no MTP layer; MTP disabled");
  }
  StoreBinder b(m->store_, opt.compute, m->owned_);
  bind_model(m->w_, b, c, mtp);
  m->prepare();
  return m;
}

}  // namespace dsv3::model
