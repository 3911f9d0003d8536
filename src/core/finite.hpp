// NaN / Inf detection on raw tensor bytes: the exponent bits of each float format, so a check of
// a whole checkpoint is one pass of integer compares without widening to F32.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.hpp"

namespace dsv3 {

// Index of the first NaN or Inf among the n elements of `dtype` at `data` (little-endian), or -1.
// Integer and bool dtypes hold neither. F8_E4M3 has no Inf; its NaN is S.1111.111.
int64_t first_non_finite(DType dtype, const void* data, int64_t n);

// Throws dsv3::Error naming `what`, the element index and its value when v[0, n) holds NaN/Inf.
void check_finite(const float* v, int64_t n, const std::string& what);

}  // namespace dsv3
