// Training data: UTF-8 text files -> documents -> tokens, cached once as binary shards in a cache
// dir, a validation split held out by document, and a deterministic, resumable batch sampler that
// packs sequences of T+1 tokens out of the concatenated document stream (sequences span document
// boundaries, as in pretraining packing). Formats and rules: docs/training-runs.md.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::train {

// Must be safe to call from several threads at once (documents are encoded in parallel).
using EncodeFn = std::function<std::vector<int32_t>(std::string_view)>;

// How a file is cut into documents.
//   Auto:      Fortune if the file has a line that is exactly "%", else Paragraph.
//   Fortune:   entries separated by lines that are exactly "%" (fortune(6) files).
//   Paragraph: runs of one or more blank (whitespace-only) lines separate documents.
//   File:      the whole file is one document.
// Documents are trimmed of surrounding blank lines; empty documents are dropped.
enum class DocSplit { Auto, Fortune, Paragraph, File };
DocSplit doc_split_from_name(const std::string& name);  // "auto", "fortune", ... ; throws
const char* doc_split_name(DocSplit s);

struct DataOptions {
  // Files or directories. A directory is walked recursively in sorted order, taking regular files
  // that are not hidden and not fortune index files (*.dat); symlinks inside it are skipped (the
  // Debian fortunes dir links NAME.u8 -> NAME). Named files are always read.
  std::vector<std::string> inputs;
  std::string cache_dir;     // shards go to cache_dir/tokens-<key>/
  std::string tokenizer_id;  // identity of the tokenizer (e.g. hash of tokenizer.json)
  int64_t vocab_size = 0;    // every token must be in [0, vocab_size)
  int32_t bos_id = -1;       // put before every document when >= 0
  int32_t eos_id = -1;       // put after every document when >= 0
  DocSplit split = DocSplit::Auto;
  double val_fraction = 0.02;  // share of documents held out (0 = none)
  int64_t min_val_tokens = 0;  // hold out more documents until validation has this many tokens
  uint64_t seed = 0;           // decides which documents are held out
  bool progress = true;        // ProgressBar while tokenizing
  int64_t shard_tokens = int64_t(1) << 26;  // tokens per shard file (256 MiB)
};

// Token stream of one split: documents (with BOS/EOS as configured) back to back.
struct TokenSplit {
  std::vector<int32_t> tokens;
  std::vector<int64_t> doc_starts;  // offset of each document in tokens
  std::vector<int64_t> doc_ids;     // corpus-wide index of each document, ascending
};

struct Dataset {
  TokenSplit train, val;
  int64_t num_docs = 0;
  int64_t num_files = 0;
  uint64_t corpus_hash = 0;  // of the source bytes, split rule and tokenizer identity
  std::string shard_dir;     // where the cached shards are
  bool from_cache = false;   // true when no tokenization was needed
};

// Lists the input files (walking directories) and checks each is a readable, non-empty, valid
// UTF-8 file; throws dsv3::Error naming the first bad one (and the byte offset of bad UTF-8).
std::vector<std::string> list_input_files(const std::vector<std::string>& inputs);

// Cuts one file's text into documents.
std::vector<std::string_view> split_documents(std::string_view text, DocSplit split);

// Loads the token shards from cache when the corpus and tokenizer are unchanged, otherwise reads,
// validates and tokenizes the inputs and writes the shards; then holds out the validation split.
// All data errors are raised here, before any training work.
Dataset load_dataset(const DataOptions& opt, const EncodeFn& encode);

// Position of a BatchSampler: everything needed to continue exactly where it stopped.
struct SamplerState {
  uint64_t seed = 0;
  int64_t epoch = 0;    // completed passes over the data
  int64_t cursor = 0;   // next window in this epoch's permutation
  int64_t batches = 0;  // batches drawn so far (informational)

  nlohmann::json to_json() const;
  static SamplerState from_json(const nlohmann::json& j);
  std::array<int64_t, 4> to_array() const;  // for an I64 checkpoint tensor
  static SamplerState from_array(std::span<const int64_t> a);
  bool operator==(const SamplerState&) const = default;
};

// Draws batches of `batch` sequences of seq_len + 1 tokens (inputs = [0, T), targets = [1, T+1)).
// Each epoch cuts the stream into windows of T+1 tokens starting at offset + i*T (the offset,
// in [0, T), and the window order are drawn from (seed, epoch)), so every token is a target once
// per epoch. With shuffle = false windows come in order from offset 0, every epoch alike (for
// evaluation). A batch that runs past the last window continues in the next epoch.
class BatchSampler {
 public:
  BatchSampler(std::span<const int32_t> tokens, int64_t batch, int64_t seq_len, uint64_t seed,
               bool shuffle = true);

  // Fills out[batch * (seq_len + 1)].
  void next(int32_t* out);
  std::vector<int32_t> next();

  const SamplerState& state() const { return state_; }
  // Throws if the state's seed differs from this sampler's or the cursor is out of range.
  void set_state(const SamplerState& s);

  int64_t windows_in_epoch(int64_t epoch) const;
  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }

 private:
  void start_epoch();
  std::span<const int32_t> tokens_;
  int64_t batch_, seq_len_;
  bool shuffle_;
  SamplerState state_;
  int64_t offset_ = 0;          // of the current epoch
  std::vector<int64_t> order_;  // window permutation of the current epoch
};

}  // namespace dsv3::train
