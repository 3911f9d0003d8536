// libFuzzer target: a .safetensors file (header length, JSON header, tensor table, data). Every
// tensor that opens is read in full, as F32 when it is a float tensor, and checked for NaN/Inf,
// so an offset or shape the validation let through reads out of bounds under ASan.
#include <cstdint>

#include "fuzz_util.hpp"
#include "io/finite.hpp"
#include "io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = dsv3::fuzz::scratch_dir() + "/input.safetensors";
  dsv3::fuzz::write_bytes(path, data, size);
  dsv3::fuzz::expect_clean([&] {
    const auto store = dsv3::io::TensorStore::open_file(path);
    for (const auto& name : store.names()) {
      const dsv3::io::TensorInfo& t = store.get(name);
      dsv3::fuzz::expect_clean([&] {
        dsv3::io::check_finite(t);
        (void)dsv3::io::read_f32(t);
      });
      dsv3::fuzz::expect_clean([&] { (void)dsv3::io::read_i32(t); });
    }
  });
  return 0;
}
