// The SwiGLU MLP of DeepSeek-V3's dense layers, shared and routed experts (report §2.1.2):
// out = down(silu(gate(x)) · up(x)). Forward (inference and training alike), and the backward
// in its two parts: the input part (dx, and the gradients dg, du it leaves for the weight part)
// and the weight part, which pipeline schedules may defer.
//
// Glossary: N tokens, D hidden, F intermediate width.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/weights.hpp"

namespace dsv3::model {

// Saved activations of one MLP call.
template <typename S>
struct MlpActs {
  std::vector<S> g, u, act;  // [N, F] gate and up projections, silu(g)·u
  size_t bytes() const { return (g.size() + u.size() + act.size()) * sizeof(S); }
};

// out[N, D] (+= when accumulate); g, u, act [N, F] receive the activations (inference may pass
// act == g: it only needs the output).
template <typename S>
void mlp_forward(S* out, S* g, S* u, S* act, const S* x, int64_t N, const MlpW<W<S>>& w,
                 bool accumulate = false);

// dx[N, D] (+= when accumulate) given dout[N, D]; dg, du [N, F] receive the gradients of the
// gate and up projections for mlp_backward_weight. Reads the saved g, u.
template <typename S>
void mlp_backward_input(S* dx, S* dg, S* du, const S* dout, const S* g, const S* u, int64_t N,
                        const MlpW<W<S>>& w, bool accumulate = false);

// dw += the weight gradients. Reads the saved x, act and dout, dg, du of the input part.
template <typename S>
void mlp_backward_weight(const MlpW<G<S>>& dw, const S* dout, const S* x, const S* act, const S* dg,
                         const S* du, int64_t N, int64_t D, int64_t F);

}  // namespace dsv3::model
