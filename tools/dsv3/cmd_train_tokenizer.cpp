// `dsv3 train-tokenizer`: byte-level BPE on text files with the DeepSeek-V3 pre-tokenizer,
// written as tokenizer.json + tokenizer_config.json (loadable by HF tokenizers and by dsv3).
// Files: *.jsonl (one {"text": ...} per line), *.json (an array of strings), anything else is
// plain UTF-8 text.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "command.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/parallel.hpp"
#include "io/file.hpp"
#include "options.hpp"
#include "tokenizer/trainer.hpp"

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Cuts plain text into ~64 KiB chunks for parallel pre-tokenization, only at a newline followed
// by a non-space byte: no DeepSeek-V3 pre-token spans such a point, so counts are unchanged.
void add_chunks(const std::string& text, std::vector<std::string>& out) {
  size_t start = 0;
  while (start < text.size()) {
    size_t cut = std::min(text.size(), start + (size_t(64) << 10));
    while (cut < text.size() && !(text[cut - 1] == '\n' && text[cut] != '\n' && text[cut] != '\r' &&
                                  text[cut] != ' ' && text[cut] != '\t'))
      ++cut;
    out.push_back(text.substr(start, cut - start));
    start = cut;
  }
}

std::vector<std::string> read_texts(const std::vector<std::string>& files, size_t* bytes) {
  std::vector<std::string> texts;
  *bytes = 0;
  for (const auto& f : files) {
    std::string data = dsv3::io::read_file(f);
    if (ends_with(f, ".jsonl")) {
      std::istringstream lines(data);
      std::string line;
      for (size_t n = 1; std::getline(lines, line); ++n) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
          texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
        } catch (const nlohmann::json::exception& e) {
          DSV3_FAIL("{}:{}: expected {{\"text\": ...}}: {}", f, n, e.what());
        }
        *bytes += texts.back().size();
      }
    } else if (ends_with(f, ".json")) {
      try {
        for (const auto& s : nlohmann::json::parse(data)) {
          texts.push_back(s.get<std::string>());
          *bytes += texts.back().size();
        }
      } catch (const nlohmann::json::exception& e) {
        DSV3_FAIL("{}: expected a JSON array of strings: {}", f, e.what());
      }
    } else {
      *bytes += data.size();
      add_chunks(data, texts);
    }
  }
  return texts;
}

void setup(CLI::App& app) {
  struct Args {
    std::vector<std::string> data;
    std::string out;
    int threads = 0;
    bool quiet = false;
    dsv3::tok::BpeTrainerOptions opt;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("train-tokenizer", "Train a byte-level BPE tokenizer");
  sub->add_option("--data", a->data, "training files (.txt, .jsonl with \"text\", .json array)")
      ->required()
      ->expected(1, -1);
  sub->add_option("--vocab-size", a->opt.vocab_size, "total vocabulary size")
      ->capture_default_str();
  sub->add_option("--out", a->out, "output directory")->required();
  sub->add_option("--min-frequency", a->opt.min_frequency, "smallest pair count that is merged")
      ->capture_default_str();
  dsv3::cli::add_int_option(sub, "--threads", a->threads, 0, 1 << 20,
                            "worker threads (default: all cores)");
  sub->add_flag("--quiet", a->quiet, "no progress bar");
  sub->callback([a] {
    dsv3::set_num_threads(dsv3::cli::cap_threads(a->threads));
    auto t0 = std::chrono::steady_clock::now();
    size_t bytes = 0;
    auto texts = read_texts(a->data, &bytes);
    a->opt.progress = !a->quiet;
    dsv3::tok::BpeTrainer trainer(a->opt);
    trainer.feed(texts);
    dsv3::log_info(fmt::format("train-tokenizer: {:.2f} MB, {} distinct pre-tokens", bytes / 1e6,
                               trainer.distinct_words()));
    auto result = trainer.train();
    dsv3::tok::save_trained_tokenizer(result, a->out);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s/tokenizer.json: vocab %d (%d merges) in %.1f s\n", a->out.c_str(),
                result.vocab_size, result.merges, s);
  });
}

}  // namespace

DSV3_COMMAND(setup);
