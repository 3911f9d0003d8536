// Implementation of eval.hpp: the inference model on the checkpoint as stored (FP32 arithmetic, no
// gradient arena), scored by Model::cross_entropy over consecutive windows of the document stream.
#include "train/eval.hpp"

#include <cmath>
#include <filesystem>

#include "core/error.hpp"
#include "model/model.hpp"
#include "tokenizer/tokenizer.hpp"
#include "train/data.hpp"

namespace fs = std::filesystem;

namespace dsv3::train {

EvalResult evaluate_model_dir(const std::string& model_dir, const std::vector<std::string>& inputs,
                              int64_t seq_len, int64_t batch, int64_t max_sequences) {
  DSV3_CHECK(seq_len >= 1 && batch >= 1, "eval: seq_len {} and batch {} must be positive", seq_len,
             batch);
  const auto files = list_input_files(inputs);
  DSV3_CHECK(fs::exists(fs::path(model_dir) / "tokenizer.json"),
             "eval: model dir '{}' has no tokenizer.json", model_dir);
  const auto tk = tok::Tokenizer::load(model_dir);
  model::LoadOptions lo;
  lo.load_mtp = false;
  lo.residency = io::Residency::Map;
  auto m = model::Model::load(model_dir, lo);
  const model::ModelConfig& mc = m->config();
  const int64_t T = std::min(seq_len, mc.max_position_embeddings - 1);
  std::vector<int32_t> stream;
  const auto docs = read_documents(files, DocSplit::Auto);
  const auto enc = tk.encode_batch(docs, false);
  for (const auto& ids : enc) {
    if (tk.bos_id()) stream.push_back(*tk.bos_id());
    stream.insert(stream.end(), ids.begin(), ids.end());
    if (tk.eos_id()) stream.push_back(*tk.eos_id());
  }
  for (int32_t id : stream)
    DSV3_CHECK(id >= 0 && id < mc.vocab_size,
               "eval: token {} of the tokenizer is outside the model's vocabulary [0, {})", id,
               mc.vocab_size);
  DSV3_CHECK(stream.size() >= 2, "eval: the data holds fewer than 2 tokens");
  // Windows of W = T + 1 tokens; a stream shorter than one window is one shorter window.
  const int64_t W = std::min<int64_t>(T + 1, int64_t(stream.size()));
  int64_t nseq = (int64_t(stream.size()) - 1) / (W - 1);
  if (max_sequences > 0) nseq = std::min(nseq, max_sequences);
  model::KVCache cache(mc, std::min(batch, nseq), W, false);
  double total = 0;
  std::vector<int32_t> buf;
  for (int64_t b0 = 0; b0 < nseq; b0 += batch) {
    const int64_t B = std::min(batch, nseq - b0);
    buf.resize(size_t(B * W));
    for (int64_t i = 0; i < B; ++i)
      std::copy_n(stream.begin() + (b0 + i) * (W - 1), W, buf.begin() + i * W);
    total += m->cross_entropy(buf.data(), B, W, cache) / double(W - 1);
  }
  EvalResult r;
  r.sequences = nseq;
  r.tokens = nseq * (W - 1);
  r.loss = total / double(nseq);
  r.ppl = std::exp(r.loss);
  return r;
}

}  // namespace dsv3::train
