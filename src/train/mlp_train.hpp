// The dense SwiGLU MLP for training (DeepSeek-V3's dense layers, shared and routed experts,
// report §2.1.2): out = down(silu(gate(x)) · up(x)), forward saving activations and backward.
//
// Glossary: N tokens, D hidden, F intermediate width.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv3::train {

template <typename S>
struct MlpParams {
  S* gate = nullptr;  // [F, D]
  S* up = nullptr;    // [F, D]
  S* down = nullptr;  // [D, F]
};

// Saved activations of one MLP call.
template <typename S>
struct MlpActs {
  std::vector<S> g, u, act;  // [N, F] gate and up projections, silu(g)·u
  size_t bytes() const { return (g.size() + u.size() + act.size()) * sizeof(S); }
};

// out[N, D] (+= when accumulate); g, u, act [N, F] receive the activations.
template <typename S>
void mlp_train_forward(S* out, S* g, S* u, S* act, const S* x, const MlpParams<const S>& w,
                       int64_t N, int64_t D, int64_t F, bool accumulate = false);

// dx[N, D] (+= when accumulate) and dw (+=) given dout[N, D]. Reads the saved x, g, u, act.
// dg, du [N, F] are scratch.
template <typename S>
void mlp_train_backward(S* dx, const MlpParams<S>& dw, const S* dout, const S* x, const S* g,
                        const S* u, const S* act, const MlpParams<const S>& w, int64_t N, int64_t D,
                        int64_t F, S* dg, S* du, bool accumulate = false);

}  // namespace dsv3::train
