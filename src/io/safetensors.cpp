// Implementation of safetensors.hpp. Nothing read from a file is trusted: the header length,
// JSON, dtypes, shapes and offsets are all validated before any tensor byte is touched.
#include "io/safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"

namespace dsv3::io {

using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // as the reference implementation

// Where the data section would start (8 + header length), read ahead of the copy so that the copy
// can align it; 0 when the file is too short or unreadable (open then reports the problem).
size_t data_section_offset(const std::string& path) {
  uint8_t len[8];
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  const ssize_t n = ::pread(fd, len, 8, 0);
  ::close(fd);
  if (n != 8) return 0;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | len[i];
  return hlen <= kMaxHeader ? size_t(8 + hlen) : 0;
}
}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path,
                                                       Residency residency) {
  auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  f->map_ = MappedFile::open(path, residency, data_section_offset(path));
  const size_t size = f->map_->size();
  DSV3_CHECK(size >= 8,
             "{}: not a safetensors file: {} bytes, shorter than the 8-byte header length", path,
             size);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | f->map_->data()[i];
  DSV3_CHECK(hlen <= kMaxHeader, "{}: header length {} is larger than the 100 MiB limit", path,
             hlen);
  DSV3_CHECK(hlen <= size - 8, "{}: truncated: header length {} but only {} bytes follow", path,
             hlen, size - 8);
  const char* hp = reinterpret_cast<const char*>(f->map_->data() + 8);
  // The JSON parser takes a NUL byte for the end of input and would accept "{...}\0junk", so a
  // header length that overshoots into zero bytes would silently shift every tensor.
  DSV3_CHECK(std::memchr(hp, 0, hlen) == nullptr,
             "{}: header contains a NUL byte (header length {})", path, hlen);
  json h;
  try {
    h = json::parse(hp, hp + hlen);
  } catch (const json::exception& e) {
    DSV3_FAIL("{}: bad JSON header: {}", path, e.what());
  }
  DSV3_CHECK(h.is_object(), "{}: header is not a JSON object", path);
  const uint8_t* data = f->map_->data() + 8 + hlen;
  const uint64_t data_size = size - 8 - hlen;

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      DSV3_CHECK(v.is_object(), "{}: __metadata__ is not an object", path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        DSV3_CHECK(m.value().is_string(), "{}: __metadata__ value of '{}' is not a string", path,
                   m.key());
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    DSV3_CHECK(v.is_object(), "{}: tensor '{}': entry is not an object", path, name);
    TensorInfo t;
    t.name = name;
    t.file = path;
    DSV3_CHECK(v.contains("dtype") && v["dtype"].is_string(), "{}: tensor '{}': missing dtype",
               path, name);
    std::string dt = v["dtype"].get<std::string>();
    DSV3_CHECK(dtype_from_name(dt, &t.dtype), "{}: tensor '{}': unknown dtype '{}'", path, name,
               dt);
    DSV3_CHECK(v.contains("shape") && v["shape"].is_array(), "{}: tensor '{}': missing shape", path,
               name);
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      DSV3_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0,
                 "{}: tensor '{}': shape entries must be non-negative integers", path, name);
      uint64_t dd = d.get<uint64_t>();
      DSV3_CHECK(dd == 0 || numel <= (1ull << 62) / dd, "{}: tensor '{}': shape overflows", path,
                 name);
      numel *= dd;
      t.shape.push_back(int64_t(dd));
    }
    const auto& off = v.contains("data_offsets") ? v["data_offsets"] : json();
    DSV3_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                   off[1].is_number_unsigned(),
               "{}: tensor '{}': data_offsets must be two non-negative integers", path, name);
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    DSV3_CHECK(b <= e && e <= data_size,
               "{}: tensor '{}': data_offsets [{}, {}] out of range (data section is {} bytes{})",
               path, name, b, e, data_size, e > data_size ? "; file truncated?" : "");
    // Compared by division: numel * element size may not fit in 64 bits (shape [2^61] of F64
    // would wrap to 0 bytes).
    const uint64_t esize = dtype_size(t.dtype);
    DSV3_CHECK((e - b) % esize == 0 && (e - b) / esize == numel,
               "{}: tensor '{}': data_offsets span {} bytes but dtype {} and shape {} need {} x {}",
               path, name, e - b, dt, t.shape_str(), numel, esize);
    t.data = data + b;
    t.nbytes = size_t(e - b);
    f->tensors_.push_back(std::move(t));
  }
  // Overlapping tensors would alias each other's bytes: refuse them. Empty tensors own no bytes
  // and are left out, or one lying inside another would hide that neighbour's overlap.
  std::vector<const TensorInfo*> order;
  for (const auto& t : f->tensors_)
    if (t.nbytes) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data < b->data; });
  for (size_t i = 1; i < order.size(); ++i) {
    const TensorInfo* a = order[i - 1];
    const TensorInfo* b = order[i];
    DSV3_CHECK(a->data + a->nbytes <= b->data,
               "{}: tensors '{}' and '{}' overlap in the data section", path, a->name, b->name);
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  DSV3_CHECK(t, "{}: missing tensor '{}'", path(), name);
  return *t;
}

TensorStore TensorStore::open_file(const std::string& path, Residency residency) {
  TensorStore s;
  s.where_ = path;
  s.files_.push_back(SafetensorsFile::open(path, residency));
  for (const auto& t : s.files_[0]->tensors()) s.by_name_[t.name] = &t;
  return s;
}

TensorStore TensorStore::open_dir(const std::string& dir, Residency residency) {
  namespace fs = std::filesystem;
  fs::path d(dir);
  DSV3_CHECK(fs::is_directory(d), "{}: not a directory", dir);
  fs::path index = d / "model.safetensors.index.json";
  if (!fs::exists(index)) {
    fs::path single = d / "model.safetensors";
    DSV3_CHECK(fs::exists(single), "{}: neither model.safetensors nor model.safetensors.index.json",
               dir);
    std::error_code ec;
    const uint64_t bytes = fs::file_size(single, ec);
    TensorStore s = open_file(single.string(), residency_for(residency, ec ? 0 : bytes));
    s.where_ = dir;
    return s;
  }
  json j;
  try {
    j = json::parse(read_file(index.string()));
  } catch (const json::exception& e) {
    DSV3_FAIL("{}: bad JSON: {}", index.string(), e.what());
  }
  DSV3_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
             "{}: missing 'weight_map' object", index.string());
  if (residency == Residency::HugePageCopy) {  // only when every shard together fits
    std::set<std::string> names;
    uint64_t total = 0;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      std::error_code ec;
      if (it.value().is_string() && names.insert(it.value().get<std::string>()).second)
        if (const uint64_t b = fs::file_size(d / it.value().get<std::string>(), ec); !ec)
          total += b;
    }
    residency = residency_for(residency, total);
  }
  TensorStore s;
  s.where_ = dir;
  std::map<std::string, size_t> file_idx;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    DSV3_CHECK(it.value().is_string(), "{}: weight_map['{}'] is not a file name", index.string(),
               it.key());
    std::string fname = it.value().get<std::string>();
    DSV3_CHECK(
        fname.find('/') == std::string::npos && fname != ".." && fname != "." && !fname.empty(),
        "{}: weight_map['{}'] = '{}' is not a file in the directory", index.string(), it.key(),
        fname);
    if (!file_idx.count(fname)) {
      DSV3_CHECK(fs::is_regular_file(d / fname),
                 "{}: weight_map['{}'] = '{}', but {} does not exist or is not a file",
                 index.string(), it.key(), fname, (d / fname).string());
      file_idx[fname] = s.files_.size();
      s.files_.push_back(SafetensorsFile::open((d / fname).string(), residency));
    }
    const auto& f = s.files_[file_idx[fname]];
    const TensorInfo* t = f->find(it.key());
    DSV3_CHECK(t, "{}: tensor '{}' is listed in {} but not stored there", (d / fname).string(),
               it.key(), index.filename().string());
    s.by_name_[it.key()] = t;
  }
  return s;
}

const TensorInfo* TensorStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& TensorStore::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  DSV3_CHECK(t, "{}: missing tensor '{}'", where_, name);
  return *t;
}

const TensorInfo& TensorStore::get(const std::string& name,
                                   const std::vector<int64_t>& shape) const {
  const TensorInfo& t = get(name);
  TensorInfo want;
  want.shape = shape;
  DSV3_CHECK(t.shape == shape, "{}: tensor '{}' has shape {}, expected {}", t.file, name,
             t.shape_str(), want.shape_str());
  return t;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> n;
  for (const auto& [k, v] : by_name_) n.push_back(k);
  return n;
}

void SafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const void* data) {
  DSV3_CHECK(name != "__metadata__", "safetensors writer: '__metadata__' is not a tensor name");
  Entry e{name, dtype, shape, {}};
  int64_t n = 1;
  for (auto d : shape) {
    DSV3_CHECK(d >= 0, "safetensors writer: tensor '{}': negative dimension in shape", name);
    n *= d;
  }
  e.bytes.resize(size_t(n) * dtype_size(dtype));
  if (n) std::memcpy(e.bytes.data(), data, e.bytes.size());
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::write(const std::string& path) const {
  json h = json::object();
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  // Tensors are laid out sorted by name, as the reference writer does.
  std::vector<const Entry*> order;
  for (const auto& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(),
            [](const Entry* a, const Entry* b) { return a->name < b->name; });
  for (size_t i = 1; i < order.size(); ++i)
    DSV3_CHECK(order[i - 1]->name != order[i]->name, "{}: tensor '{}' was added twice", path,
               order[i]->name);
  uint64_t off = 0;
  for (const Entry* e : order) {
    h[e->name] = {{"dtype", std::string(dtype_name(e->dtype))},
                  {"shape", e->shape},
                  {"data_offsets", {off, off + e->bytes.size()}}};
    off += e->bytes.size();
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');  // align the data section to 8 bytes
  atomic_write(path, [&](int fd) {
    uint8_t len[8];
    uint64_t n = hs.size();
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
    write_all(fd, len, 8, path);
    write_all(fd, hs.data(), hs.size(), path);
    for (const Entry* e : order) write_all(fd, e->bytes.data(), e->bytes.size(), path);
  });
}

std::vector<float> read_f32(const TensorInfo& t) {
  DSV3_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16 ||
                 t.dtype == DType::F8_E4M3 || t.dtype == DType::F8_E5M2 || t.dtype == DType::F64,
             "{}: tensor '{}' has dtype {}, expected a float dtype", t.file, t.name,
             dtype_name(t.dtype));
  std::vector<float> out(size_t(t.numel()));
  to_f32(out.data(), t.data, t.dtype, out.size());
  return out;
}

std::vector<int32_t> read_i32(const TensorInfo& t) {
  std::vector<int32_t> out(size_t(t.numel()));
  if (t.dtype == DType::I32) {
    if (t.nbytes) std::memcpy(out.data(), t.data, t.nbytes);  // empty: both may be null
  } else if (t.dtype == DType::I64) {
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;  // the data section need not be 8-byte aligned
      std::memcpy(&v, t.data + 8 * i, 8);
      DSV3_CHECK(v >= INT32_MIN && v <= INT32_MAX, "{}: tensor '{}': value {} exceeds int32",
                 t.file, t.name, v);
      out[i] = int32_t(v);
    }
  } else {
    DSV3_FAIL("{}: tensor '{}' has dtype {}, expected I32 or I64", t.file, t.name,
              dtype_name(t.dtype));
  }
  return out;
}

}  // namespace dsv3::io
