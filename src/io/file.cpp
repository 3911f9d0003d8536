// Implementation of file.hpp (POSIX).
#include "io/file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace dsv3::io {

std::string read_file(const std::string& path) {
  // An ifstream opens a directory and then reads nothing; say what is wrong instead.
  DSV3_CHECK(!std::filesystem::is_directory(path), "cannot read {}: it is a directory", path);
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f.good(), "cannot open {}: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_all(int fd, const void* data, size_t n, const std::string& what) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    DSV3_CHECK(w > 0, "write to {} failed: {}", what, std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

void atomic_write(const std::string& path, const std::function<void(int fd)>& write) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on "." + string.
  std::string name = ".";
  name += target.filename().string();
  name += ".tmp.";
  name += std::to_string(getpid());
  const std::string tmp = (dir / name).string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSV3_CHECK(fd >= 0, "cannot create {}: {}", tmp, std::strerror(errno));
  try {
    write(fd);
    DSV3_CHECK(::fsync(fd) == 0, "fsync of {} failed: {}", tmp, std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    DSV3_FAIL("cannot rename {} to {}: {}", tmp, path, std::strerror(e));
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void atomic_write(const std::string& path, const std::string& bytes) {
  atomic_write(path, [&](int fd) { write_all(fd, bytes.data(), bytes.size(), path); });
}

namespace {

// Reads the whole file into anonymous memory advised for huge pages, `lead` bytes after a 2 MiB
// boundary (*base, *mapped: the mapping); nullptr when the memory is not available (the caller
// maps the file instead). Throws on read errors.
uint8_t* huge_page_copy(int fd, size_t size, size_t lead, uint8_t** base, size_t* mapped,
                        const std::string& path) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t bytes = (lead + size + kHuge - 1) / kHuge * kHuge;
  // Over-allocate by one huge page so the copy can start on a 2 MiB boundary.
  void* raw = ::mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t a = (r + kHuge - 1) / kHuge * kHuge;
  if (a > r) ::munmap(raw, a - r);
  const size_t tail = (r + bytes + kHuge) - (a + bytes);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(a + bytes), tail);
  auto* b = reinterpret_cast<uint8_t*>(a);
  ::madvise(b, bytes, MADV_HUGEPAGE);  // advice only: without THP the copy still works
  uint8_t* p = b + lead;
  size_t off = 0;
  while (off < size) {
    const ssize_t n = ::pread(fd, p + off, std::min(size - off, size_t(1) << 30), off_t(off));
    if (n <= 0) {
      const int err = errno;
      ::munmap(b, bytes);
      DSV3_FAIL("cannot read {} at byte {} of {}: {}", path, off, size,
                n == 0 ? "unexpected end of file" : std::strerror(err));
    }
    off += size_t(n);
  }
  ::mprotect(b, bytes, PROT_READ);
  *base = b;
  *mapped = bytes;
  return p;
}

}  // namespace

Residency residency_for(Residency wanted, uint64_t total_bytes) {
  if (wanted != Residency::HugePageCopy) return wanted;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return Residency::Map;
  return total_bytes <= uint64_t(pages) * uint64_t(page) / 2 ? wanted : Residency::Map;
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, Residency residency,
                                             size_t align_at) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DSV3_CHECK(fd >= 0, "cannot open {}: {}", path, std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    DSV3_FAIL("cannot stat {}: {}", path, std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    DSV3_FAIL("cannot map {}: not a regular file", path);
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = size_t(st.st_size);
  if (m->size_ > 0 && residency == Residency::HugePageCopy) {
    try {
      const size_t lead = (kCopyAlign - align_at % kCopyAlign) % kCopyAlign;
      m->data_ = huge_page_copy(fd, m->size_, lead, &m->base_, &m->mapped_, path);
    } catch (...) {
      ::close(fd);
      throw;
    }
  }
  if (m->size_ > 0 && !m->data_) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      DSV3_FAIL("cannot mmap {}: {}", path, std::strerror(errno));
    }
    m->data_ = static_cast<const uint8_t*>(p);
    m->base_ = static_cast<uint8_t*>(p);
    m->mapped_ = m->size_;
  }
  ::close(fd);
  return m;
}

MappedFile::~MappedFile() {
  if (base_) ::munmap(base_, mapped_);
}

}  // namespace dsv3::io
