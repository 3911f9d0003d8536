// safetensors: memory-mapped reader with full validation, atomic writer, and sharded checkpoints
// (`model.safetensors.index.json`). Format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "io/file.hpp"

namespace dsv3::io {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping; valid while the file is open
  size_t nbytes = 0;
  std::string file;  // where it came from, for error messages

  int64_t numel() const;
  std::string shape_str() const;
};

class SafetensorsFile {
 public:
  // Validates the header, every dtype, shape and offset; throws dsv3::Error naming the file and
  // tensor on any inconsistency.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path,
                                               Residency residency = Residency::Map);

  const std::string& path() const { return map_->path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::shared_ptr<MappedFile> map_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: either one `model.safetensors` or shards listed by
// `model.safetensors.index.json` (weight_map name -> file).
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir, Residency residency = Residency::Map);
  static TensorStore open_file(const std::string& path, Residency residency = Residency::Map);

  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;
  // Requires `name` with the given dtype set and shape; the error names tensor, file and both
  // shapes.
  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;
  const std::string& where() const { return where_; }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> by_name_;
  std::string where_;
};

// Collects tensors and writes one safetensors file atomically. Data is copied on add.
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
           const void* data);
  void add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data) {
    add(name, DType::F32, shape, data);
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void write(const std::string& path) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Reads a tensor of any float dtype as F32 (BF16/F16/F8 widened exactly).
std::vector<float> read_f32(const TensorInfo& t);
std::vector<int32_t> read_i32(const TensorInfo& t);

}  // namespace dsv3::io
