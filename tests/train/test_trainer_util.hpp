// Helpers of the trainer tests: a scratch dir, a generated English-like corpus and a tiny
// DeepSeek-V3 training config (MLA with q_lora, 8 routed + 1 shared experts, group-limited
// sigmoid routing, MTP depth 1) that trains in seconds.
#pragma once
#include <unistd.h>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "core/rng.hpp"
#include "train/train_config.hpp"
#include "train/trainer.hpp"

namespace dsv3::train::testing {

// The scratch dirs this process made, removed when it exits (ctest runs each test in its own
// process; set DSV3_KEEP_TEST_DIRS=1 to keep them for a look after a failure). Children that
// the tests fork leave through _exit, which skips this.
struct TestDirs {
  std::vector<std::filesystem::path> dirs;
  ~TestDirs() {
    if (std::getenv("DSV3_KEEP_TEST_DIRS")) return;
    for (const auto& d : dirs) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }
};

inline std::string test_dir(const std::string& name) {
  static TestDirs made;
  const auto d = std::filesystem::temp_directory_path() /
                 ("dsv3-test-trainer-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  made.dirs.push_back(d);
  return d.string();
}

// Paragraphs of simple sentences from a small grammar (seeded), one file per 100 paragraphs.
inline void write_corpus(const std::string& dir, int paragraphs = 400) {
  static const char* subj[] = {"the cat",  "a dog",   "the old man", "my friend",
                               "the bird", "a child", "the farmer",  "her brother"};
  static const char* verb[] = {"sees", "likes", "finds", "eats", "wants", "keeps", "takes"};
  static const char* obj[] = {"the red apple", "a small house", "the green field", "some bread",
                              "the long road", "a warm coat",   "the blue sea"};
  static const char* tail[] = {"today", "at night", "in the morning", "again", "with joy"};
  std::filesystem::create_directories(dir);
  Rng rng(42);
  std::ofstream f;
  for (int p = 0; p < paragraphs; ++p) {
    if (p % 100 == 0) {
      if (f.is_open()) f.close();
      f.open(dir + "/part" + std::to_string(p / 100) + ".txt");
    }
    const int n = 2 + int(rng.below(3));
    for (int s = 0; s < n; ++s) {
      std::string line = std::string(subj[rng.below(8)]) + " " + verb[rng.below(7)] + " " +
                         obj[rng.below(7)] + " " + tail[rng.below(5)] + ".";
      line[0] = char(std::toupper(line[0]));
      f << line << (s + 1 < n ? " " : "\n");
    }
    f << "\n";
  }
}

inline TrainConfig tiny_config(const std::string& root) {
  write_corpus(root + "/corpus");
  TrainConfig c;
  c.data = {root + "/corpus"};
  c.vocab_size = 512;
  c.steps = 10;
  c.batch = 4;
  c.seq_len = 32;
  c.threads = 2;
  c.lr = 3e-3;
  c.checkpoint_every = 0;
  c.eval_every = 0;
  c.eval_batches = 2;
  c.sample_prompts = {"The cat"};
  c.sample_tokens = 8;
  c.val_fraction = 0.05;
  c.model = {{"hidden_size", 64},      {"intermediate_size", 128}, {"moe_intermediate_size", 32},
             {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 2},
             {"q_lora_rank", 32},      {"kv_lora_rank", 32},       {"qk_nope_head_dim", 16},
             {"qk_rope_head_dim", 8},  {"v_head_dim", 16},         {"max_position_embeddings", 64}};
  return c;
}

// tiny_config for a run of `steps` steps with a checkpoint every `checkpoint_every` and no samples.
inline TrainConfig short_run_config(const std::string& root, int64_t steps,
                                    int64_t checkpoint_every) {
  TrainConfig c = tiny_config(root);
  c.steps = steps;
  c.checkpoint_every = checkpoint_every;
  c.sample_tokens = 0;
  return c;
}

// The options of a quiet run in run_dir; stop_after >= 0 stops it after that step.
inline RunOptions quiet_run(const std::string& run_dir, int64_t stop_after = -1) {
  RunOptions o;
  o.run_dir = run_dir;
  o.quiet = true;
  o.stop_after = stop_after;
  return o;
}

}  // namespace dsv3::train::testing
