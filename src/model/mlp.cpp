// SwiGLU MLP forward and backward; see mlp.hpp.
#include "model/mlp.hpp"

#include "backend/cpu/ops.hpp"

namespace dsv3::model {

template <typename S>
void mlp_forward(S* out, S* g, S* u, S* act, const S* x, int64_t N, const MlpW<W<S>>& w,
                 bool accumulate) {
  if (N == 0) return;
  if (N <= 2) {  // decode: each weight's start is asked for while the one before streams
    cpu::linear_prefetch(w.up);
    cpu::linear_prefetch(w.down);
  }
  cpu::linear_forward(g, x, N, w.gate);
  cpu::linear_forward(u, x, N, w.up);
  cpu::swiglu_forward(act, g, u, N, w.gate.out());
  cpu::linear_forward(out, act, N, w.down, accumulate);
}

template <typename S>
void mlp_backward_input(S* dx, S* dg, S* du, const S* dout, const S* g, const S* u, int64_t N,
                        const MlpW<W<S>>& w, bool accumulate) {
  if (N == 0) return;
  cpu::linear_backward_input(dg, dout, N, w.down);  // dact, turned into dg in place below
  cpu::swiglu_backward(dg, du, dg, g, u, N, w.gate.out());
  cpu::linear_backward_input(dx, dg, N, w.gate, accumulate);
  cpu::linear_backward_input(dx, du, N, w.up, true);
}

template <typename S>
void mlp_backward_weight(const MlpW<G<S>>& dw, const S* dout, const S* x, const S* act, const S* dg,
                         const S* du, int64_t N, int64_t D, int64_t F) {
  cpu::linear_backward_weight(dw.down, dout, act, N, F, D);
  cpu::linear_backward_weight(dw.gate, dg, x, N, D, F);
  cpu::linear_backward_weight(dw.up, du, x, N, D, F);
}

#define DSV3_MLP_INSTANTIATE(S)                                                                   \
  template void mlp_forward<S>(S*, S*, S*, S*, const S*, int64_t, const MlpW<W<S>>&, bool);       \
  template void mlp_backward_input<S>(S*, S*, S*, const S*, const S*, const S*, int64_t,          \
                                      const MlpW<W<S>>&, bool);                                   \
  template void mlp_backward_weight<S>(const MlpW<G<S>>&, const S*, const S*, const S*, const S*, \
                                       const S*, int64_t, int64_t, int64_t);
DSV3_MLP_INSTANTIATE(float)
DSV3_MLP_INSTANTIATE(double)

}  // namespace dsv3::model
