// SwiGLU MLP forward and backward; see mlp.hpp.
#include "model/mlp.hpp"

#include <type_traits>

#include "backend/cpu/ops.hpp"
#include "core/error.hpp"
#include "core/scratch.hpp"

namespace dsv3::model {

template <typename S>
cpu::ActForm act_form(bool after_attention) {
  if constexpr (std::is_same_v<S, float>)
    return cpu::saved_act_form(after_attention);
  else
    return cpu::ActForm::F32;
}

template <typename S>
void wgrad_saved(S* dW, const S* dy, const S* x, const cpu::SavedAct* sx, int64_t N, int64_t in,
                 int64_t out) {
  if constexpr (std::is_same_v<S, float>) {
    if (sx && sx->saved()) {
      DSV3_CHECK(sx->rows() == N && sx->cols() == in,
                 "wgrad: saved activation [{}, {}] for a [{}, {}] input", sx->rows(), sx->cols(), N,
                 in);
      cpu::lowp_backward_weight(dW, dy, *sx, out, cpu::wgrad_precision());
      return;
    }
  }
  cpu::linear_backward_weight(dW, dy, x, N, in, out);
}

template <typename S>
void mlp_forward(S* out, S* g, S* u, S* act, const S* x, int64_t N, const MlpW<W<S>>& w,
                 bool accumulate) {
  if (N == 0) return;
  if (N <= 2) {  // decode: each weight's start is asked for while the one before streams
    cpu::linear_prefetch(w.up);
    cpu::linear_prefetch(w.down);
  }
  thread_local std::vector<S> scratch;
  if (!act) act = grow(scratch, size_t(N * w.gate.out()));
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
void mlp_backward_weight(const MlpW<G<S>>& dw, const S* dout, const S* x, const cpu::SavedAct* sx,
                         const S* g, const S* u, const S* dg, const S* du, int64_t N, int64_t D,
                         int64_t F) {
  if (N == 0) return;
  thread_local std::vector<S> scratch;
  S* act = grow(scratch, size_t(N * F));
  cpu::swiglu_forward(act, g, u, N, F);  // the forward's values, recomputed
  cpu::linear_backward_weight(dw.down, dout, act, N, F, D);
  wgrad_saved(dw.gate, dg, x, sx, N, D, F);
  wgrad_saved(dw.up, du, x, sx, N, D, F);
}

#define DSV3_MLP_INSTANTIATE(S)                                                                \
  template cpu::ActForm act_form<S>(bool);                                                     \
  template void wgrad_saved<S>(S*, const S*, const S*, const cpu::SavedAct*, int64_t, int64_t, \
                               int64_t);                                                       \
  template void mlp_forward<S>(S*, S*, S*, S*, const S*, int64_t, const MlpW<W<S>>&, bool);    \
  template void mlp_backward_input<S>(S*, S*, S*, const S*, const S*, const S*, int64_t,       \
                                      const MlpW<W<S>>&, bool);                                \
  template void mlp_backward_weight<S>(const MlpW<G<S>>&, const S*, const S*,                  \
                                       const cpu::SavedAct*, const S*, const S*, const S*,     \
                                       const S*, int64_t, int64_t, int64_t);
DSV3_MLP_INSTANTIATE(float)
DSV3_MLP_INSTANTIATE(double)

}  // namespace dsv3::model
