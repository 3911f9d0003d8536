// File helpers: whole-file reads with clear errors, atomic writes (temp file, fsync, rename,
// fsync of the directory) so a killed process never leaves a half-written file under the real
// name, and read-only memory maps.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace dsv3::io {

std::string read_file(const std::string& path);

// Calls write(fd) on a temp file beside `path`, then fsyncs and renames it over `path`.
void atomic_write(const std::string& path, const std::function<void(int fd)>& write);
void atomic_write(const std::string& path, const std::string& bytes);
// Writes all n bytes to fd or throws naming `what`.
void write_all(int fd, const void* data, size_t n, const std::string& what);

class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace dsv3::io
