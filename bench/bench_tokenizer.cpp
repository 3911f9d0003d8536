// Tokenizer benchmark: encode throughput of the DeepSeek-V3 tokenizer on 1 and 2 threads, and the
// time to train a byte-level BPE of 8,192 tokens on 5 MB. Prints JSON.
//
// Corpus (deterministic, ~6.5 MB, cut into ~8 KiB documents at line ends and interleaved):
//   English: every plain-text fortune file of Debian's `fortunes` package
//            (/usr/share/games/fortunes/*, without .dat/.u8), ~2.6 MB;
//   code:    C++ standard library headers of Debian 12 (/usr/include/c++/12/bits/*, sorted by
//            name), the first 2.0 MB;
//   CJK:     1.8 MB of generated Chinese and Japanese sentences (seeded Rng over a fixed word
//            list, with CJK punctuation, digits and some Latin).
// Usage: bench_tokenizer [--tokenizer DIR] [--repeat N] [--no-train]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tokenizer/trainer.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// CPU time of the whole process: throughput per CPU-second stays meaningful when other jobs
// share the machine.
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<std::string> sorted_files(const std::string& dir, bool (*keep)(const fs::path&)) {
  std::vector<std::string> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && keep(e.path())) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string concat(const std::vector<std::string>& files, size_t limit) {
  std::string s;
  for (const auto& f : files) {
    if (s.size() >= limit) break;
    s += dsv3::io::read_file(f);
  }
  if (s.size() > limit) s.resize(s.rfind('\n', limit) + 1);
  return s;
}

std::string generated_cjk(size_t bytes, uint64_t seed) {
  const char* words[] = {
      "我们",     "模型",       "训练",       "数据",     "专家", "混合",   "注意力", "推理",
      "参数",     "语言",       "研究",       "深度",     "学习", "计算",   "效率",   "成本",
      "开源",     "发布",       "性能",       "任务",     "问题", "方法",   "系统",   "网络",
      "结构",     "实验",       "结果",       "表明",     "能够", "通过",   "使用",   "进行",
      "提高",     "中国",       "北京",       "上海",     "今天", "明天",   "时间",   "世界",
      "社会",     "经济",       "发展",       "技术",     "是",   "的",     "了",     "在",
      "和",       "有",         "这",         "个",       "为",   "不",     "也",     "就",
      "都",       "很",         "大",         "日本",     "東京", "言語",   "モデル", "データ",
      "トークン", "学習",       "する",       "です",     "ます", "これは", "ために", "について",
      "として",   "ありがとう", "こんにちは", "テキスト", "の",   "は",     "が",     "を",
      "に",       "で",         "と",         "も",       "か",   "から",   "まで",   "ひらがな",
      "カタカナ"};
  const char* punct[] = {"，", "。", "、", "！", "？", "：", "；", "「", "」", "（", "）"};
  const char* latin[] = {"DeepSeek-V3", "MoE", "GPU", "2024", "128K", "FP8", "API", "3.14"};
  dsv3::Rng rng(seed);
  std::string s;
  while (s.size() < bytes) {
    int n = 4 + int(rng.below(20));
    for (int i = 0; i < n; ++i) {
      double u = rng.uniform();
      if (u < 0.05)
        s += latin[rng.below(std::size(latin))];
      else if (u < 0.15)
        s += punct[rng.below(std::size(punct))];
      else
        s += words[rng.below(std::size(words))];
    }
    s += rng.uniform() < 0.2 ? "。\n" : "。";
  }
  return s;
}

// Cuts text into documents of about `size` bytes at line ends.
void add_docs(const std::string& text, size_t size, std::vector<std::vector<std::string>>& out) {
  out.emplace_back();
  for (size_t start = 0; start < text.size();) {
    size_t cut = text.find('\n', std::min(text.size(), start + size));
    cut = cut == std::string::npos ? text.size() : cut + 1;
    out.back().push_back(text.substr(start, cut - start));
    start = cut;
  }
}

struct Corpus {
  std::vector<std::string> docs;
  size_t english = 0, code = 0, cjk = 0;
  size_t bytes() const { return english + code + cjk; }
};

Corpus make_corpus() {
  Corpus c;
  std::string english = concat(
      sorted_files(
          "/usr/share/games/fortunes",
          [](const fs::path& p) { return p.extension() != ".dat" && p.extension() != ".u8"; }),
      size_t(4) << 20);
  std::string code = concat(
      sorted_files("/usr/include/c++/12/bits", [](const fs::path&) { return true; }), 2000000);
  std::string cjk = generated_cjk(1800000, 20261123);
  c.english = english.size();
  c.code = code.size();
  c.cjk = cjk.size();
  std::vector<std::vector<std::string>> parts;
  add_docs(english, 8192, parts);
  add_docs(code, 8192, parts);
  add_docs(cjk, 8192, parts);
  for (size_t i = 0;; ++i) {  // interleave the three sources
    bool any = false;
    for (auto& p : parts)
      if (i < p.size()) {
        c.docs.push_back(std::move(p[i]));
        any = true;
      }
    if (!any) break;
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = std::string(DSV3_SOURCE_DIR) + "/data/tokenizers/deepseek-v3";
  int repeat = 3;
  bool train = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-train") train = false;
    if (i + 1 >= argc) continue;
    if (a == "--tokenizer") dir = argv[i + 1];
    if (a == "--repeat") repeat = std::max(1, std::atoi(argv[i + 1]));
  }
  int max_threads = dsv3::num_threads();
  Corpus corpus = make_corpus();
  double mb = corpus.bytes() / 1e6;

  auto t0 = Clock::now();
  auto tok = dsv3::tok::Tokenizer::load(dir);
  double load_s = seconds_since(t0);

  std::string results;
  size_t n_tokens = 0;
  for (int threads : {1, 2}) {
    if (threads > max_threads && threads > 1) break;
    dsv3::set_num_threads(threads);
    // A fresh tokenizer per thread count: the first pass runs on cold BPE memos.
    auto t = dsv3::tok::Tokenizer::load(dir);
    double cold = 0, best = 1e30, cold_cpu = 0, best_cpu = 1e30;
    for (int r = 0; r <= repeat; ++r) {
      auto t1 = Clock::now();
      double c1 = cpu_seconds();
      auto ids = t.encode_batch(corpus.docs);
      double s = seconds_since(t1), cpu = cpu_seconds() - c1;
      n_tokens = 0;
      for (const auto& v : ids) n_tokens += v.size();
      if (r == 0) {
        cold = s;
        cold_cpu = cpu;
      } else {
        best = std::min(best, s);
        best_cpu = std::min(best_cpu, cpu);
      }
    }
    results += fmt::format(
        "{}{{\"threads\": {}, \"cold_s\": {:.3f}, \"cold_mb_per_s\": {:.1f}, \"warm_s\": {:.3f}, "
        "\"warm_mb_per_s\": {:.1f}, \"cold_mb_per_cpu_s\": {:.1f}, \"warm_mb_per_cpu_s\": {:.1f}}}",
        results.empty() ? "" : ", ", threads, cold, mb / cold, best, mb / best, mb / cold_cpu,
        mb / best_cpu);
  }

  // Training: the first 5 MB of the corpus (document order), 8,192 tokens, all threads.
  std::string train_json = "null";
  if (train) {
    dsv3::set_num_threads(max_threads);
    std::vector<std::string> train_docs;
    size_t train_bytes = 0;
    for (const auto& d : corpus.docs) {
      if (train_bytes + d.size() > 5000000) break;
      train_docs.push_back(d);
      train_bytes += d.size();
    }
    dsv3::tok::BpeTrainerOptions opt;
    opt.vocab_size = 8192;
    opt.progress = false;
    auto t2 = Clock::now();
    dsv3::tok::BpeTrainer trainer(opt);
    trainer.feed(train_docs);
    double count_s = seconds_since(t2);
    auto trained = trainer.train();
    double train_s = seconds_since(t2);
    train_json = fmt::format(
        "{{\"mb\": {:.3f}, \"vocab_size\": {}, \"merges\": {}, \"threads\": {}, "
        "\"distinct_pre_tokens\": {}, \"pre_tokenize_s\": {:.2f}, \"total_s\": {:.2f}}}",
        train_bytes / 1e6, trained.vocab_size, trained.merges, max_threads,
        trainer.distinct_words(), count_s, train_s);
  }

  std::printf(
      "{\"bench\": \"tokenizer\", \"tokenizer\": \"%s\", \"load_s\": %.3f,\n"
      " \"corpus\": {\"docs\": %zu, \"mb\": %.3f, \"english_mb\": %.3f, \"code_mb\": %.3f, "
      "\"cjk_mb\": %.3f, \"tokens\": %zu, \"bytes_per_token\": %.2f},\n"
      " \"encode\": [%s],\n"
      " \"train\": %s}\n",
      dir.c_str(), load_s, corpus.docs.size(), mb, corpus.english / 1e6, corpus.code / 1e6,
      corpus.cjk / 1e6, n_tokens, double(corpus.bytes()) / double(n_tokens), results.c_str(),
      train_json.c_str());
  return 0;
}
