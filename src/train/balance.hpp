// Load balancing of the routed experts, DeepSeek-V3 report §2.1.2:
//  - auxiliary-loss-free balancing (eq. 16 and the text after it): every expert i carries a bias
//    b_i that is added to its affinity for top-K selection only; after every optimizer step b_i
//    moves by −γ when expert i was overloaded in that step and by +γ when it was underloaded;
//  - the complementary sequence-wise balance loss (eqs. 17-20), with its gradient w.r.t. the
//    unbiased affinities s_{i,t};
//  - the load statistics the report plots (MaxVio, §4.5.2 / Figure 9's metric).
//
// Glossary: B sequences, T tokens per sequence, N = B·T tokens, E routed experts, K experts per
// token. Everything works on flat arrays so one routing layer's buffers can be passed as they are.
#pragma once
#include <cstdint>
#include <vector>

#include "model/moe.hpp"

namespace dsv3::train {

// Moves each expert's routing bias one step toward balance: bias[i] −= γ if load[i] is above the
// mean load over the E experts, += γ if below, unchanged if equal (compared exactly in integers).
// bias [E] (e.g. mlp.gate.e_score_correction_bias), load [E] tokens routed to each expert in the
// step just taken (summed over the whole global batch when data-parallel).
void update_bias(float* bias, const int64_t* load, int64_t E, float gamma);

// MaxVio = (max_i load_i − mean load) / mean load; 0 when every expert gets the mean (or nothing
// was routed at all).
double max_vio(const int64_t* load, int64_t E);

struct LoadStats {
  std::vector<int64_t> load;  // [E] tokens routed to each expert
  double max_vio = 0;
};

// Counts the tokens routed to each expert from one layer's selection indices [N, K].
// Throws when an index lies outside [0, E).
LoadStats load_stats(const int32_t* indices, int64_t N, int64_t K, int64_t E);

// The sequence-wise balance loss lives with the MoE (model/moe.hpp).
using model::balance_loss;

}  // namespace dsv3::train
