// Element types and their codecs: bf16 (round-to-nearest-even), f16, fp8 e4m3fn (saturating
// finite, max 448, as in the DeepSeek-V3 release) and e5m2. The safetensors names (F32, BF16, ...)
// are the canonical spellings.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace dsv3 {

enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, F8_E5M2, I32, I64, U8, I8, BOOL, F64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);
// Parses a safetensors dtype name; returns false when it is unknown.
bool dtype_from_name(std::string_view name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities; 0x7f/0xff are NaN; max 448.
float fp8_e4m3_to_f32(uint8_t v);
// Round to nearest even; values beyond 448 saturate to +-448; NaN maps to NaN.
uint8_t f32_to_fp8_e4m3(float f);
// e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa, IEEE-like with inf/NaN.
float fp8_e5m2_to_f32(uint8_t v);
uint8_t f32_to_fp8_e5m2(float f);

// A 256-entry decode table for e4m3, for hot loops.
const float* fp8_e4m3_table();

// Converts n elements of type t at src to float.
void to_f32(float* dst, const void* src, DType t, size_t n);
// Converts n floats to type t at dst (F32, BF16, F16, F8_E4M3, F8_E5M2).
void from_f32(void* dst, const float* src, DType t, size_t n);

}  // namespace dsv3
