// Expert selection of DeepSeek's reference Gate, shared by inference (model/moe.cpp) and
// training (train/moe_train.cpp, which also runs it in double for finite-difference checks).
//
// Glossary: E routed experts, G groups of E/G experts, K experts per token.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>

namespace dsv3::model {

// Chooses the K experts of one token from its biased affinities biased[E] (scores plus the
// correction bias when there is one). With `grouped` (n_group > 1 and a group-limited method)
// groups are scored by the sum of their two largest biased scores (their maximum when
// unbiased) and all but the best `topk_group` are masked to -inf; then the top K by biased
// score, ties to the lower index. The K indices land in ord[0, K), best first. `biased` is
// clobbered; gscore[G], ord[E] and gord[G] are scratch.
template <typename S>
void select_experts(S* biased, bool has_bias, int64_t E, int64_t G, int64_t topk_group,
                    bool grouped, int64_t K, S* gscore, int32_t* ord, int32_t* gord) {
  if (grouped) {
    const int64_t per = E / G;
    for (int64_t g = 0; g < G; ++g) {
      const S* q = biased + g * per;
      if (has_bias) {  // sum of the two largest
        S m1 = -INFINITY, m2 = -INFINITY;
        for (int64_t i = 0; i < per; ++i) {
          if (q[i] > m1) {
            m2 = m1;
            m1 = q[i];
          } else if (q[i] > m2) {
            m2 = q[i];
          }
        }
        gscore[g] = m1 + m2;
      } else {
        gscore[g] = *std::max_element(q, q + per);
      }
    }
    std::iota(gord, gord + G, 0);
    std::stable_sort(gord, gord + G, [&](int32_t a, int32_t b) { return gscore[a] > gscore[b]; });
    for (int64_t gi = topk_group; gi < G; ++gi)
      std::fill_n(biased + gord[gi] * per, per, S(-INFINITY));
  }
  std::iota(ord, ord + E, 0);
  std::partial_sort(ord, ord + K, ord + E, [&](int32_t a, int32_t b) {
    return biased[a] > biased[b] || (biased[a] == biased[b] && a < b);
  });
}

}  // namespace dsv3::model
