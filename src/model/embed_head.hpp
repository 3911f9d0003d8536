// The ends of the network: token embedding (forward from any stored dtype, backward into an
// arena), and the output head fused with the next-token cross-entropy (DeepSeek-V3 report §2.2: the
// main and MTP objectives are cross-entropies over the shared output head).
//
// Glossary: N rows (tokens), D hidden, V vocabulary.
#pragma once
#include <cstdint>
#include <vector>

#include "model/weights.hpp"

namespace dsv3::model {

// out[N, D] = table[tokens[n]] (table [V, D], rows widened to S); throws on an id outside [0, V).
template <typename S>
void embedding_forward(S* out, const typename W<S>::Table& table, const int32_t* tokens, int64_t N);
// dtable[V, D] += Σ_n onehot(tokens[n]) · dout[n]. Reads the saved tokens.
template <typename S>
void embedding_backward(S* dtable, const S* dout, const int32_t* tokens, int64_t N, int64_t D);

template <typename S>
struct HeadScratch {
  std::vector<S> logits;  // [chunk, V]
};

// Cross-entropy of logits = xn·Wᵀ (head W [V, D]) against targets[n] (rows with a negative target
// are skipped). Returns the SUM of -log softmax(logits[n])[targets[n]] (in double) and sets
// *count to the number of scored rows. When dxn is non-null: dxn[N, D] = scale·∂sum/∂xn
// (overwritten) and dW += scale·∂sum/∂W (pass scale = weight / count for a mean). Rows run in
// chunks so the [N, V] logits are never materialized. Saved activations read by the backward
// part: xn (the head input); the logits are recomputed per chunk.
template <typename S>
double head_cross_entropy(S* dxn, S* dW, const S* xn, const typename W<S>::Lin& head,
                          const int32_t* targets, int64_t N, S scale, int64_t* count,
                          HeadScratch<S>& s);

}  // namespace dsv3::model
