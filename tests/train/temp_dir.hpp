// A scratch directory for one test: dsv3_test_<tag>_<pid>_<n> under the system temp dir, made
// empty on construction and removed with its contents at the end of the scope, so tests run in
// parallel by ctest never share one.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>

namespace dsv3::train::testing {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path =
        std::filesystem::temp_directory_path() /
        ("dsv3_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path.string(); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace dsv3::train::testing
