// Training data: UTF-8 text files -> documents -> tokens, cached once as binary shards in a cache
// dir, and a validation split held out by document; the batch sampler that packs sequences out of
// the token stream is in sampler.hpp. Formats and rules: docs/training-runs.md.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "train/sampler.hpp"

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

// Reads each file and cuts it into documents (copies, in file order).
std::vector<std::string> read_documents(const std::vector<std::string>& files, DocSplit split);

// Loads the token shards from cache when the corpus and tokenizer are unchanged, otherwise reads,
// validates and tokenizes the inputs and writes the shards; then holds out the validation split.
// All data errors are raised here, before any training work.
Dataset load_dataset(const DataOptions& opt, const EncodeFn& encode);

}  // namespace dsv3::train
