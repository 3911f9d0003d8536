// Exponent-bit NaN/Inf scans of finite.hpp.
#include "core/finite.hpp"

#include <cstring>

#include "core/error.hpp"

namespace dsv3 {

namespace {
// First element whose bits under `mask` equal `mask` (exponent all ones: Inf or NaN).
template <typename U>
int64_t first_all_ones(const void* data, int64_t n, U mask) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, p + i * int64_t(sizeof(U)), sizeof(U));
    if ((bits & mask) == mask) return i;
  }
  return -1;
}
}  // namespace

int64_t first_non_finite(DType dtype, const void* data, int64_t n) {
  switch (dtype) {
    case DType::F32:
      return first_all_ones<uint32_t>(data, n, 0x7f800000u);
    case DType::F64:
      return first_all_ones<uint64_t>(data, n, 0x7ff0000000000000ull);
    case DType::BF16:
      return first_all_ones<uint16_t>(data, n, uint16_t(0x7f80));
    case DType::F16:
      return first_all_ones<uint16_t>(data, n, uint16_t(0x7c00));
    case DType::F8_E4M3:
      return first_all_ones<uint8_t>(data, n, uint8_t(0x7f));
    case DType::F8_E5M2:
      return first_all_ones<uint8_t>(data, n, uint8_t(0x7c));
    default:
      return -1;
  }
}

void check_finite(const float* v, int64_t n, const std::string& what) {
  const int64_t i = first_non_finite(DType::F32, v, n);
  DSV3_CHECK(i < 0, "{}: element {} is {} (weights must be finite)", what, i, i < 0 ? 0.f : v[i]);
}

}  // namespace dsv3
