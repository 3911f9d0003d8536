// Implementation of run_lock.hpp.
#include "train/run_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "io/file.hpp"

namespace dsv3::train {

std::string RunDirLock::path(const std::string& run_dir) {
  return (std::filesystem::path(run_dir) / ".lock").string();
}

RunDirLock::RunDirLock(const std::string& run_dir) {
  const std::string p = path(run_dir);
  fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  DSV3_CHECK(fd_ >= 0, "cannot open the run dir lock {}: {}", p, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder;
    try {
      holder = io::read_file(p);
    } catch (const Error&) {
    }
    ::close(fd_);
    fd_ = -1;
    DSV3_CHECK(err != EWOULDBLOCK,
               "run dir '{}' is in use by another dsv3 train (pid {}): one run dir takes one "
               "writer at a time; wait for it to end, or stop it first",
               run_dir, holder.empty() ? "unknown" : holder);
    DSV3_FAIL("cannot lock the run dir lock {}: {}", p, std::strerror(err));
  }
  // The holder's pid, for the message above (informational: the lock is the flock).
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0) {
    [[maybe_unused]] ssize_t n = ::pwrite(fd_, pid.data(), pid.size(), 0);
  }
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace dsv3::train
