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

#include "backend/cpu/linear_lowp.hpp"
#include "model/weights.hpp"

namespace dsv3::model {

// Saved activations of one MLP call: the SwiGLU inputs. Its output silu(g)·u, the input of the
// down projection, is not kept: the forward computes it into a per-thread scratch and the weight
// part of the backward recomputes it from g and u (report §3.3.3: cache the SwiGLU input,
// recompute its output; elementwise, so the recomputed values are the forward's bit for bit).
template <typename S>
struct MlpActs {
  std::vector<S> g, u;  // [N, F] gate and up projections
  size_t bytes() const { return (g.size() + u.size()) * sizeof(S); }
};

// out[N, D] (+= when accumulate); g, u [N, F] receive the activations. act [N, F] receives
// silu(g)·u; null: a per-thread scratch (training, which recomputes it); inference may pass
// act == g.
template <typename S>
void mlp_forward(S* out, S* g, S* u, S* act, const S* x, int64_t N, const MlpW<W<S>>& w,
                 bool accumulate = false);

// dx[N, D] (+= when accumulate) given dout[N, D]; dg, du [N, F] receive the gradients of the
// gate and up projections for mlp_backward_weight. Reads the saved g, u.
template <typename S>
void mlp_backward_input(S* dx, S* dg, S* du, const S* dout, const S* g, const S* u, int64_t N,
                        const MlpW<W<S>>& w, bool accumulate = false);

// dw += the weight gradients. Reads the saved input (x [N, D] in FP32, or sx when it was saved in
// low precision: sx non-null and saved), g and u (silu(g)·u recomputed for the down projection),
// and dout, dg, du of the input part.
template <typename S>
void mlp_backward_weight(const MlpW<G<S>>& dw, const S* dout, const S* x, const cpu::SavedAct* sx,
                         const S* g, const S* u, const S* dg, const S* du, int64_t N, int64_t D,
                         int64_t F);

// dW += dyᵀ·x for a linear layer whose input was saved as x (FP32) or, when sx is non-null and
// saved, as sx (float models under a WgradPrecision scope only).
template <typename S>
void wgrad_saved(S* dW, const S* dy, const S* x, const cpu::SavedAct* sx, int64_t N, int64_t in,
                 int64_t out);

// The form the training forward saves a Wgrad activation of S in (cpu::saved_act_form for float,
// F32 for double).
template <typename S>
cpu::ActForm act_form(bool after_attention = false);

}  // namespace dsv3::model
