// One writer per run directory: `dsv3 train` holds an exclusive flock(2) on RUN_DIR/.lock from
// before it reads or cleans the directory until it ends. The kernel drops the lock when the
// process dies (kill -9 included), so a crashed run never leaves a stale lock behind.
#pragma once
#include <string>

namespace dsv3::train {

class RunDirLock {
 public:
  // Locks RUN_DIR/.lock (creating the file; run_dir must exist). Throws dsv3::Error naming the
  // directory and the holder's pid when another process holds it.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

  static std::string path(const std::string& run_dir);

 private:
  int fd_ = -1;
};

}  // namespace dsv3::train
