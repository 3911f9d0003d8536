// libFuzzer target: config.json text through parse_config (types, ranges, consistency), then the
// parameter table and the memory estimate of what it accepted.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_util.hpp"
#include "model/config.hpp"
#include "model/footprint.hpp"
#include "model/params.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  dsv3::fuzz::expect_clean([&] {
    const auto c = dsv3::model::parse_config(text, "fuzz/config.json");
    (void)dsv3::model::param_count(c);
    (void)c.softmax_scale();
    (void)c.to_json().dump();
  });
  return 0;
}
