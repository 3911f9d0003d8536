// `dsv3 eval`: next-token loss and perplexity of a Hugging Face model dir on text files.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::train {

struct EvalResult {
  double loss = 0, ppl = 0;
  int64_t tokens = 0, sequences = 0;
};

// Next-token loss and perplexity of the HF model dir on the documents of `inputs` (tokenized with
// the model dir's tokenizer, BOS/EOS framed, cut into windows of seq_len + 1).
EvalResult evaluate_model_dir(const std::string& model_dir, const std::vector<std::string>& inputs,
                              int64_t seq_len, int64_t batch, int64_t max_sequences);

}  // namespace dsv3::train
