// libFuzzer target: a training checkpoint dir (RUN/checkpoints/step-N) whose manifest.json is the
// input. The bytes after the first NUL, when there is one, replace meta.json too; the tensors
// file is a valid one written at start-up, so a manifest that passes reaches the tensor loader.
// The empty input restores the valid manifest (fuzz/seeds/checkpoint_manifest/valid.json is it).
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>

#include "fuzz_util.hpp"
#include "io/file.hpp"
#include "train/checkpoint.hpp"

namespace {
// A real checkpoint of step 3 (two tensors); returns its dir.
const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::string run = dsv3::fuzz::scratch_dir() + "/run";
    dsv3::train::CheckpointData d;
    d.step = 3;
    d.meta["train_config"] = {{"steps", 10}};
    d.tensors["w"] = dsv3::train::Blob::f32({1.f, 2.f, 3.f});
    d.tensors["pos"] = dsv3::train::Blob::i64({7});
    dsv3::train::save_checkpoint(run, d, 1);
    return dsv3::train::checkpoint_path(run, 3);
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = checkpoint_dir();
  static const std::string meta = dsv3::io::read_file(dir + "/meta.json");
  static const std::string manifest = dsv3::io::read_file(dir + "/manifest.json");
  if (size == 0) {
    data = reinterpret_cast<const uint8_t*>(manifest.data());
    size = manifest.size();
  }
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t mlen = nul ? size_t(nul - data) : size;
  dsv3::fuzz::write_bytes(dir + "/manifest.json", data, mlen);
  if (nul)
    dsv3::fuzz::write_bytes(dir + "/meta.json", nul + 1, size - mlen - 1);
  else
    dsv3::fuzz::write_bytes(dir + "/meta.json", reinterpret_cast<const uint8_t*>(meta.data()),
                            meta.size());
  dsv3::fuzz::expect_clean([&] {
    const auto ck = dsv3::train::load_checkpoint(dir);
    for (const auto& entry : ck.tensors) {
      const std::string& name = entry.first;
      const dsv3::train::Blob& blob = entry.second;
      dsv3::fuzz::expect_clean([&] { (void)blob.to_f32(name); });
      dsv3::fuzz::expect_clean([&] { (void)blob.to_i64(name); });
    }
  });
  return 0;
}
