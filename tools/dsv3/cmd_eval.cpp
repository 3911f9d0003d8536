// `dsv3 eval --model DIR --data FILES [--seq-len T] [--batch B] [--max-sequences N]`: next-token
// loss and perplexity of a Hugging Face model dir on text, with the dir's tokenizer.
#include <cstdio>

#include "command.hpp"
#include "core/parallel.hpp"
#include "options.hpp"
#include "train/eval.hpp"

namespace {

void setup(CLI::App& app) {
  struct Args {
    std::string model;
    std::vector<std::string> data;
    int64_t seq_len = 128, batch = 8, max_sequences = 0;
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("eval", "Validation loss and perplexity of a model on text");
  sub->add_option("--model", a->model, "model directory (HF layout, with tokenizer.json)")
      ->required();
  sub->add_option("--data", a->data, "text files or directories")->required()->expected(1, -1);
  using dsv3::cli::add_int_option;
  add_int_option(sub, "--seq-len", a->seq_len, 1, INT32_MAX, "tokens per window (default 128)");
  add_int_option(sub, "--batch", a->batch, 1, INT32_MAX, "windows per forward pass (default 8)");
  add_int_option(sub, "--max-sequences", a->max_sequences, 0, INT64_MAX,
                 "at most this many windows (default 0: all)");
  add_int_option(sub, "--threads", a->threads, 0, 1 << 20, "worker threads (default: all cores)");
  sub->callback([a] {
    dsv3::set_num_threads(dsv3::cli::cap_threads(a->threads));
    auto r =
        dsv3::train::evaluate_model_dir(a->model, a->data, a->seq_len, a->batch, a->max_sequences);
    std::printf("loss %.4f  ppl %.3f  (%lld tokens in %lld windows)\n", r.loss, r.ppl,
                (long long)r.tokens, (long long)r.sequences);
  });
}

}  // namespace

DSV3_COMMAND(setup);
