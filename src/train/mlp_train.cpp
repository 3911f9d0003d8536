// SwiGLU MLP training forward and backward; see mlp_train.hpp.
#include "train/mlp_train.hpp"

#include "backend/cpu/ops.hpp"
#include "train/linalg.hpp"

namespace dsv3::train {

template <typename S>
void mlp_train_forward(S* out, S* g, S* u, S* act, const S* x, const MlpParams<const S>& w,
                       int64_t N, int64_t D, int64_t F, bool accumulate) {
  if (N == 0) return;
  linear_forward(g, x, w.gate, N, D, F);
  linear_forward(u, x, w.up, N, D, F);
  cpu::swiglu_forward(act, g, u, N, F);
  linear_forward(out, act, w.down, N, F, D, accumulate);
}

template <typename S>
void mlp_train_backward(S* dx, const MlpParams<S>& dw, const S* dout, const S* x, const S* g,
                        const S* u, const S* act, const MlpParams<const S>& w, int64_t N, int64_t D,
                        int64_t F, S* dg, S* du, bool accumulate) {
  if (N == 0) return;
  linear_backward_input(dg, dout, w.down, N, F, D);  // dact, turned into dg in place below
  linear_backward_weight(dw.down, dout, act, N, F, D);
  cpu::swiglu_backward(dg, du, dg, g, u, N, F);
  linear_backward_input(dx, dg, w.gate, N, D, F, accumulate);
  linear_backward_input(dx, du, w.up, N, D, F, true);
  linear_backward_weight(dw.gate, dg, x, N, D, F);
  linear_backward_weight(dw.up, du, x, N, D, F);
}

#define DSV3_MLP_INSTANTIATE(S)                                                                    \
  template void mlp_train_forward<S>(S*, S*, S*, S*, const S*, const MlpParams<const S>&, int64_t, \
                                     int64_t, int64_t, bool);                                      \
  template void mlp_train_backward<S>(S*, const MlpParams<S>&, const S*, const S*, const S*,       \
                                      const S*, const S*, const MlpParams<const S>&, int64_t,      \
                                      int64_t, int64_t, S*, S*, bool);
DSV3_MLP_INSTANTIATE(float)
DSV3_MLP_INSTANTIATE(double)

}  // namespace dsv3::train
