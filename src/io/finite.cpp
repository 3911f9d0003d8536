// NaN/Inf checks of loaded checkpoints; see finite.hpp.
#include "io/finite.hpp"

#include "core/error.hpp"
#include "core/finite.hpp"

namespace dsv3::io {

void check_finite(const TensorInfo& t) {
  const int64_t i = first_non_finite(t.dtype, t.data, t.numel());
  if (i < 0) return;
  TensorInfo one = t;  // the offending element alone, widened for the message
  one.shape = {1};
  one.data = t.data + i * int64_t(dtype_size(t.dtype));
  one.nbytes = dtype_size(t.dtype);
  DSV3_FAIL("{}: tensor '{}' element {} is {}: weights must be finite", t.file, t.name, i,
            read_f32(one)[0]);
}

void check_finite(const TensorStore& st) {
  for (const auto& name : st.names()) check_finite(st.get(name));
}

}  // namespace dsv3::io
