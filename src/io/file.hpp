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

// How a file's bytes are held in memory.
enum class Residency {
  // mmap of the page cache (4 KiB pages): nothing is read until touched, nothing is copied.
  Map,
  // A private copy in anonymous memory advised for 2 MiB transparent huge pages. Weights that
  // decode streams on every token then cost one TLB entry per 2 MiB instead of 512: batch-1
  // decode of a 1.4 B-parameter MoE went from 38.9 to 53.3 tokens/s on one thread
  // (docs/benchmarks.md). Falls back to Map when the memory cannot be had.
  HugePageCopy,
};

// HugePageCopy only when `total_bytes` (all files to be loaded) fit in half the physical memory;
// otherwise Map, so a checkpoint near or above the size of RAM is never copied.
Residency residency_for(Residency wanted, uint64_t total_bytes);

class MappedFile {
 public:
  // With HugePageCopy the copy puts byte `align_at` of the file on a kCopyAlign boundary (a
  // safetensors file's data section: weight rows then start on cache lines, and the GEMV's
  // 32-byte loads never straddle two). A mapping keeps the file's own alignment.
  static constexpr size_t kCopyAlign = 4096;
  static std::shared_ptr<MappedFile> open(const std::string& path,
                                          Residency residency = Residency::Map,
                                          size_t align_at = 0);
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  uint8_t* base_ = nullptr;  // the mapping: data_ or a little before it (HugePageCopy)
  size_t mapped_ = 0;        // bytes mapped at base_ (HugePageCopy rounds up to 2 MiB)
  std::string path_;
};

}  // namespace dsv3::io
