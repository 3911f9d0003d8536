// Codecs for the element types of dtype.hpp. Conversions are exact where the format allows and
// round to nearest even otherwise, matching torch's casts.
#include "core/dtype.hpp"

#include <array>
#include <cmath>

#include "core/error.hpp"

namespace dsv3 {

namespace {
struct DTypeInfo {
  DType t;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kInfo[] = {
    {DType::F32, "F32", 4},         {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1}, {DType::I32, "I32", 4},
    {DType::I64, "I64", 8},         {DType::U8, "U8", 1},           {DType::I8, "I8", 1},
    {DType::BOOL, "BOOL", 1},       {DType::F64, "F64", 8},
};
}  // namespace

size_t dtype_size(DType t) {
  for (const auto& i : kInfo)
    if (i.t == t) return i.size;
  DSV3_ASSERT(false, "unknown dtype");
}

std::string_view dtype_name(DType t) {
  for (const auto& i : kInfo)
    if (i.t == t) return i.name;
  DSV3_ASSERT(false, "unknown dtype");
}

bool dtype_from_name(std::string_view name, DType* out) {
  for (const auto& i : kInfo)
    if (i.name == name) {
      *out = i.t;
      return true;
    }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(float(man), -24);
    return sign ? -f : f;
  }
  uint32_t u;
  if (exp == 31)
    u = sign | 0x7f800000u | (man << 13);
  else
    u = sign | ((exp + 112) << 23) | (man << 13);
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000);
  float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;
  if (a < 6.103515625e-05f) {  // subnormal: quantum 2^-24, nearbyint rounds to even
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));
  }
  uint32_t au = u & 0x7fffffffu;
  au += 0xfffu + ((au >> 13) & 1u);
  return sign | uint16_t(((au >> 13) - (112u << 10)) & 0x7fff);
}

namespace {
// Generic round-to-nearest-even encoder for small floats with `mbits` mantissa bits and the given
// bias; `max_finite` saturates (e4m3fn) and `has_inf` selects IEEE overflow (e5m2).
uint8_t encode_small(float f, int mbits, int bias, float max_finite, bool has_inf) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (std::isnan(f)) return has_inf ? 0x7f : 0x7f;
  int min_exp = 1 - bias;  // exponent of the smallest normal
  if (a == 0) return sign;
  int e;
  std::frexp(a, &e);
  e -= 1;  // a = m * 2^e with m in [1,2)
  if (e < min_exp) e = min_exp;
  float quantum = std::ldexp(1.0f, e - mbits);
  float q = std::nearbyint(a / quantum) * quantum;  // ties to even under the default rounding mode
  if (q > max_finite) {
    if (has_inf) {
      // IEEE: overflow to inf only past max + half ulp; nearbyint already decided the rounding.
      return sign | 0x7c;
    }
    q = max_finite;
  }
  if (q == 0) return sign;
  int qe;
  std::frexp(q, &qe);
  qe -= 1;
  uint32_t code;
  if (qe < min_exp) {  // subnormal
    code = uint32_t(std::lround(q / std::ldexp(1.0f, min_exp - mbits)));
  } else {
    uint32_t man = uint32_t(std::lround((q / std::ldexp(1.0f, qe) - 1.0f) * (1 << mbits)));
    code = (uint32_t(qe + bias) << mbits) | man;
  }
  return sign | uint8_t(code);
}

float decode_small(uint8_t v, int mbits, int bias) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int ebits = 7 - mbits;
  int exp = (v >> mbits) & ((1 << ebits) - 1);
  int man = v & ((1 << mbits) - 1);
  if (exp == 0) return sign * std::ldexp(float(man), 1 - bias - mbits);
  return sign * std::ldexp(1.0f + float(man) / float(1 << mbits), exp - bias);
}

std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) {
    if ((i & 0x7f) == 0x7f)
      t[i] = NAN;
    else
      t[i] = decode_small(uint8_t(i), 3, 7);
  }
  return t;
}
const std::array<float, 256> kE4M3 = make_e4m3_table();
}  // namespace

const float* fp8_e4m3_table() {
  return kE4M3.data();
}
float fp8_e4m3_to_f32(uint8_t v) {
  return kE4M3[v];
}
uint8_t f32_to_fp8_e4m3(float f) {
  return encode_small(f, 3, 7, 448.0f, false);
}

float fp8_e5m2_to_f32(uint8_t v) {
  int exp = (v >> 2) & 0x1f;
  if (exp == 31) {
    if (v & 3) return NAN;
    return (v & 0x80) ? -INFINITY : INFINITY;
  }
  return decode_small(v, 2, 15);
}
uint8_t f32_to_fp8_e5m2(float f) {
  if (std::isnan(f)) return 0x7f;
  if (std::isinf(f)) return std::signbit(f) ? 0xfc : 0x7c;
  return encode_small(f, 2, 15, 57344.0f, true);
}

namespace {
// Element i of a little-endian array that may sit at any address: a safetensors data offset
// need not be a multiple of the element size (found by fuzz/fuzz_safetensors under UBSan).
template <typename T>
T load_unaligned(const void* src, size_t i) {
  T v;
  std::memcpy(&v, static_cast<const uint8_t*>(src) + i * sizeof(T), sizeof(T));
  return v;
}
}  // namespace

void to_f32(float* dst, const void* src, DType t, size_t n) {
  switch (t) {
    case DType::F32:
      if (n > 0) std::memcpy(dst, src, n * 4);  // an empty tensor's pointers may be null
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_unaligned<uint16_t>(src, i));
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_unaligned<uint16_t>(src, i));
      return;
    case DType::F8_E4M3: {
      auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = kE4M3[s[i]];
      return;
    }
    case DType::F8_E5M2: {
      auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = fp8_e5m2_to_f32(s[i]);
      return;
    }
    case DType::F64:
      for (size_t i = 0; i < n; ++i) dst[i] = float(load_unaligned<double>(src, i));
      return;
    default:
      DSV3_FAIL("cannot convert {} to F32", dtype_name(t));
  }
}

void from_f32(void* dst, const float* src, DType t, size_t n) {
  switch (t) {
    case DType::F32:
      if (n > 0) std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::F8_E4M3: {
      auto* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_fp8_e4m3(src[i]);
      return;
    }
    case DType::F8_E5M2: {
      auto* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_fp8_e5m2(src[i]);
      return;
    }
    default:
      DSV3_FAIL("cannot convert F32 to {}", dtype_name(t));
  }
}

}  // namespace dsv3
