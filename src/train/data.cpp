// Implementation of data.hpp: input validation, document splitting, parallel tokenization into
// checksummed token shards and the validation hold-out.
#include "train/data.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "train/checkpoint.hpp"

namespace dsv3::train {

namespace fs = std::filesystem;

namespace {

constexpr char kShardMagic[8] = {'D', 'S', 'V', '3', 'T', 'O', 'K', '\0'};
constexpr uint32_t kShardVersion = 1;

// The fixed-size header at the start of every shard file (little-endian).
struct ShardHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t corpus_hash;
  uint64_t vocab_size;
  uint32_t shard_index, shard_count;
  uint64_t first_doc;  // corpus-wide index of this shard's first document
  uint64_t doc_count;
  uint64_t token_count;
  uint64_t checksum;  // hash64 of every byte after the header
};
static_assert(sizeof(ShardHeader) == 72);

struct SourceFile {
  std::string path;
  std::string text;
};

bool hidden_or_index(const fs::path& rel) {
  for (const auto& part : rel)
    if (!part.empty() && part.string()[0] == '.' && part != "." && part != "..") return true;
  return rel.extension() == ".dat";
}

// Returns the byte offset of the first invalid UTF-8 sequence (or NUL byte), or npos.
size_t find_bad_utf8(std::string_view s) {
  auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    uint8_t c = p[i];
    if (c == 0) return i;
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0)
      len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
      len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
      len = 4, cp = c & 0x07;
    else
      return i;
    if (i + size_t(len) > n) return i;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += size_t(len);
  }
  return std::string::npos;
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  DSV3_CHECK(!inputs.empty(), "no training data given");
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    auto st = fs::status(in, ec);
    DSV3_CHECK(!ec && fs::exists(st), "data input {} does not exist", in);
    if (!fs::is_directory(st)) {
      DSV3_CHECK(fs::is_regular_file(st), "data input {} is not a regular file", in);
      files.push_back(in);
      continue;
    }
    std::vector<std::string> found;
    fs::recursive_directory_iterator it(in, ec), end;
    DSV3_CHECK(!ec, "cannot read data directory {}: {}", in, ec.message());
    for (; it != end; it.increment(ec)) {
      DSV3_CHECK(!ec, "cannot read data directory {}: {}", in, ec.message());
      fs::path rel = fs::relative(it->path(), in);
      if (hidden_or_index(rel)) {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (it->is_symlink() || !it->is_regular_file()) continue;
      found.push_back(it->path().string());
    }
    DSV3_CHECK(!found.empty(), "data directory {} contains no text files", in);
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

std::vector<SourceFile> read_inputs(const std::vector<std::string>& inputs) {
  std::vector<SourceFile> out;
  for (const auto& path : expand_inputs(inputs)) {
    SourceFile f{path, io::read_file(path)};
    std::string_view t = f.text;
    if (t.substr(0, 3) == "\xEF\xBB\xBF") f.text.erase(0, 3);
    size_t bad = find_bad_utf8(f.text);
    if (bad != std::string::npos) {
      int64_t line = 1 + std::count(f.text.begin(), f.text.begin() + int64_t(bad), '\n');
      DSV3_FAIL("data file {} is not UTF-8 text: invalid byte 0x{:02x} at offset {} (line {})",
                path, uint8_t(f.text[bad]), bad, line);
    }
    DSV3_CHECK(f.text.find_first_not_of(" \t\r\n") != std::string::npos,
               "data file {} is empty (no text)", path);
    out.push_back(std::move(f));
  }
  return out;
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

// Drops leading blank lines and trailing whitespace.
std::string_view trim_doc(std::string_view d) {
  while (!d.empty()) {
    size_t nl = d.find('\n');
    std::string_view first = d.substr(0, nl);
    if (!is_blank(first)) break;
    d = nl == std::string_view::npos ? std::string_view() : d.substr(nl + 1);
  }
  size_t end = d.find_last_not_of(" \t\r\n");
  return end == std::string_view::npos ? std::string_view() : d.substr(0, end + 1);
}

// Calls fn(line, begin_offset) for every line (without its '\n').
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    fn(text.substr(pos, end - pos), pos);
    pos = end + 1;
  }
}

bool is_percent_line(std::string_view l) {
  return l == "%" || l == "%\r";
}

std::string shard_name(uint32_t i) {
  return fmt::format("shard-{:05d}.bin", i);
}

// Tokens of each document, as read from / written to the shards.
struct DocTokens {
  std::vector<int32_t> tokens;
  std::vector<int64_t> starts;  // num_docs + 1 offsets into tokens
  int64_t num_docs() const { return int64_t(starts.size()) - 1; }
};

// Reads and validates all shards; returns false (with the reason) when the cache is unusable.
bool read_shards(const std::string& dir, uint64_t key, int64_t vocab, DocTokens* out,
                 std::string* why) {
  out->tokens.clear();
  out->starts.assign(1, 0);
  uint32_t count = 1;
  for (uint32_t i = 0; i < count; ++i) {
    std::string path = (fs::path(dir) / shard_name(i)).string();
    if (!fs::is_regular_file(path)) {
      *why = path + " is missing";
      return false;
    }
    auto m = io::MappedFile::open(path);
    ShardHeader h;
    if (m->size() < sizeof h) {
      *why = path + " is shorter than its header";
      return false;
    }
    std::memcpy(&h, m->data(), sizeof h);
    if (i == 0) count = h.shard_count;
    uint64_t body = m->size() - sizeof h;
    bool ok = std::memcmp(h.magic, kShardMagic, 8) == 0 && h.version == kShardVersion &&
              h.header_bytes == sizeof h && h.corpus_hash == key &&
              h.vocab_size == uint64_t(vocab) && h.shard_index == i && h.shard_count == count &&
              count > 0 && h.first_doc == uint64_t(out->num_docs()) && h.doc_count < body / 8 &&
              h.token_count <= body / 4 && body == (h.doc_count + 1) * 8 + h.token_count * 4;
    if (!ok) {
      *why = path + " has a bad or foreign header";
      return false;
    }
    if (hash64(m->data() + sizeof h, body) != h.checksum) {
      *why = path + " fails its checksum";
      return false;
    }
    std::vector<uint64_t> offs(h.doc_count + 1);
    std::memcpy(offs.data(), m->data() + sizeof h, offs.size() * 8);
    if (offs.front() != 0 || offs.back() != h.token_count ||
        !std::is_sorted(offs.begin(), offs.end())) {
      *why = path + " has inconsistent document offsets";
      return false;
    }
    int64_t base = int64_t(out->tokens.size());
    for (size_t d = 1; d < offs.size(); ++d) out->starts.push_back(base + int64_t(offs[d]));
    out->tokens.resize(size_t(base) + h.token_count);
    std::memcpy(out->tokens.data() + base, m->data() + sizeof h + offs.size() * 8,
                h.token_count * 4);
  }
  return true;
}

void write_shards(const std::string& dir, uint64_t key, int64_t vocab, const DocTokens& docs,
                  int64_t shard_tokens) {
  fs::create_directories(dir);
  // Shard boundaries fall between documents: a shard takes documents until it holds shard_tokens.
  std::vector<int64_t> cuts{0};
  for (int64_t d = 0; d < docs.num_docs(); ++d)
    if (docs.starts[size_t(d + 1)] - docs.starts[size_t(cuts.back())] >= shard_tokens &&
        d + 1 < docs.num_docs())
      cuts.push_back(d + 1);
  cuts.push_back(docs.num_docs());
  uint32_t count = uint32_t(cuts.size() - 1);
  for (uint32_t i = 0; i < count; ++i) {
    int64_t d0 = cuts[i], d1 = cuts[i + 1];
    int64_t t0 = docs.starts[size_t(d0)], t1 = docs.starts[size_t(d1)];
    std::vector<uint64_t> offs;
    for (int64_t d = d0; d <= d1; ++d) offs.push_back(uint64_t(docs.starts[size_t(d)] - t0));
    Hasher64 hs;
    hs.update(offs.data(), offs.size() * 8);
    hs.update(docs.tokens.data() + t0, size_t(t1 - t0) * 4);
    ShardHeader h{};
    std::memcpy(h.magic, kShardMagic, 8);
    h.version = kShardVersion;
    h.header_bytes = sizeof h;
    h.corpus_hash = key;
    h.vocab_size = uint64_t(vocab);
    h.shard_index = i;
    h.shard_count = count;
    h.first_doc = uint64_t(d0);
    h.doc_count = uint64_t(d1 - d0);
    h.token_count = uint64_t(t1 - t0);
    h.checksum = hs.digest();
    std::string path = (fs::path(dir) / shard_name(i)).string();
    io::atomic_write(path, [&](int fd) {
      io::write_all(fd, &h, sizeof h, path);
      io::write_all(fd, offs.data(), offs.size() * 8, path);
      io::write_all(fd, docs.tokens.data() + t0, size_t(t1 - t0) * 4, path);
    });
  }
}

DocTokens tokenize(const std::vector<SourceFile>& files, DocSplit split, const EncodeFn& encode,
                   int64_t vocab, bool progress) {
  std::vector<std::string_view> texts;
  std::vector<size_t> file_of;
  for (size_t f = 0; f < files.size(); ++f)
    for (auto d : split_documents(files[f].text, split)) {
      texts.push_back(d);
      file_of.push_back(f);
    }
  int64_t n = int64_t(texts.size());
  std::vector<std::vector<int32_t>> enc(static_cast<size_t>(n));
  std::mutex mu;
  std::exception_ptr err;
  ProgressBar bar("tokenizing", n, progress);
  int64_t block = 64 * std::max(1, num_threads());
  for (int64_t b0 = 0; b0 < n && !err; b0 += block) {
    int64_t b1 = std::min(n, b0 + block);
    // An exception must not leave an OpenMP region: keep the first and rethrow after.
    parallel_for(b1 - b0, [&](int64_t lo, int64_t hi) {
      for (int64_t i = b0 + lo; i < b0 + hi; ++i) {
        try {
          enc[size_t(i)] = encode(texts[size_t(i)]);
          for (int32_t t : enc[size_t(i)])
            DSV3_CHECK(t >= 0 && t < vocab,
                       "tokenizer returned token id {} outside the vocabulary [0, {}) for a "
                       "document of {}",
                       t, vocab, files[file_of[size_t(i)]].path);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!err) err = std::current_exception();
          return;
        }
      }
    });
    bar.update(b1);
  }
  if (err) std::rethrow_exception(err);
  bar.finish(fmt::format("{} documents", n));
  DocTokens out;
  out.starts.assign(1, 0);
  size_t total = 0;
  for (const auto& e : enc) total += e.size();
  out.tokens.reserve(total);
  for (auto& e : enc) {
    out.tokens.insert(out.tokens.end(), e.begin(), e.end());
    out.starts.push_back(int64_t(out.tokens.size()));
    std::vector<int32_t>().swap(e);
  }
  return out;
}

void append_doc(TokenSplit* s, const DocTokens& docs, int64_t d, const DataOptions& opt) {
  s->doc_starts.push_back(int64_t(s->tokens.size()));
  s->doc_ids.push_back(d);
  if (opt.bos_id >= 0) s->tokens.push_back(opt.bos_id);
  s->tokens.insert(s->tokens.end(), docs.tokens.begin() + docs.starts[size_t(d)],
                   docs.tokens.begin() + docs.starts[size_t(d + 1)]);
  if (opt.eos_id >= 0) s->tokens.push_back(opt.eos_id);
}

// Holds out documents chosen by a seeded shuffle; both splits keep corpus order.
void split_dataset(const DocTokens& docs, const DataOptions& opt, Dataset* ds) {
  int64_t n = docs.num_docs();
  std::vector<char> is_val(size_t(n), 0);
  if (opt.val_fraction > 0 || opt.min_val_tokens > 0) {
    DSV3_CHECK(n >= 2,
               "cannot hold out a validation split: the corpus has {} document(s); give more "
               "text or set the validation fraction to 0",
               n);
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = i;
    Rng rng(hash64(&opt.seed, sizeof opt.seed, 0x76616c));
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(perm[size_t(i)], perm[rng.below(uint64_t(i + 1))]);
    int64_t want = std::clamp<int64_t>(std::llround(opt.val_fraction * double(n)), 1, n - 1);
    int64_t taken = 0, tokens = 0;
    while (taken < n - 1 && (taken < want || tokens < opt.min_val_tokens)) {
      int64_t d = perm[size_t(taken++)];
      is_val[size_t(d)] = 1;
      tokens += docs.starts[size_t(d + 1)] - docs.starts[size_t(d)];
    }
  }
  for (int64_t d = 0; d < n; ++d)
    append_doc(is_val[size_t(d)] ? &ds->val : &ds->train, docs, d, opt);
}

}  // namespace

DocSplit doc_split_from_name(const std::string& name) {
  for (DocSplit s : {DocSplit::Auto, DocSplit::Fortune, DocSplit::Paragraph, DocSplit::File})
    if (name == doc_split_name(s)) return s;
  DSV3_FAIL("document split must be auto, fortune, paragraph or file, got '{}'", name);
}

const char* doc_split_name(DocSplit s) {
  switch (s) {
    case DocSplit::Auto:
      return "auto";
    case DocSplit::Fortune:
      return "fortune";
    case DocSplit::Paragraph:
      return "paragraph";
    case DocSplit::File:
      return "file";
  }
  return "?";
}

std::vector<std::string> list_input_files(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (auto& f : read_inputs(inputs)) out.push_back(std::move(f.path));
  return out;
}

std::vector<std::string_view> split_documents(std::string_view text, DocSplit split) {
  std::vector<std::string_view> docs;
  auto push = [&](size_t b, size_t e) {
    std::string_view d = trim_doc(text.substr(b, e - b));
    if (!d.empty()) docs.push_back(d);
  };
  if (split == DocSplit::Auto) {
    split = DocSplit::Paragraph;
    for_each_line(text, [&](std::string_view l, size_t) {
      if (is_percent_line(l)) split = DocSplit::Fortune;
    });
  }
  if (split == DocSplit::File) {
    push(0, text.size());
    return docs;
  }
  size_t start = 0;
  for_each_line(text, [&](std::string_view l, size_t at) {
    bool sep = split == DocSplit::Fortune ? is_percent_line(l) : is_blank(l);
    if (!sep) return;
    push(start, at);
    start = at + l.size() + 1;
  });
  if (start < text.size()) push(start, text.size());
  return docs;
}

std::vector<std::string> read_documents(const std::vector<std::string>& files, DocSplit split) {
  std::vector<std::string> docs;
  for (const auto& f : files) {
    const std::string text = io::read_file(f);
    for (auto d : split_documents(text, split)) docs.emplace_back(d);
  }
  return docs;
}

Dataset load_dataset(const DataOptions& opt, const EncodeFn& encode) {
  DSV3_CHECK(opt.vocab_size > 0, "data: vocab_size must be positive, got {}", opt.vocab_size);
  DSV3_CHECK(!opt.cache_dir.empty(), "data: no cache dir given");
  DSV3_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1,
             "data: validation fraction must be in [0, 1), got {}", opt.val_fraction);
  DSV3_CHECK(opt.bos_id < opt.vocab_size && opt.eos_id < opt.vocab_size,
             "data: BOS {} / EOS {} outside the vocabulary of {}", opt.bos_id, opt.eos_id,
             opt.vocab_size);
  std::vector<SourceFile> files = read_inputs(opt.inputs);

  Hasher64 key_h;
  key_h.update_str("dsv3-tokens-v1");
  key_h.update_str(opt.tokenizer_id);
  key_h.update_u64(uint64_t(opt.vocab_size));
  key_h.update_str(doc_split_name(opt.split));
  key_h.update_u64(files.size());
  for (const auto& f : files) key_h.update_str(f.text);

  Dataset ds;
  ds.num_files = int64_t(files.size());
  ds.corpus_hash = key_h.digest();
  ds.shard_dir = (fs::path(opt.cache_dir) / ("tokens-" + hex64(ds.corpus_hash))).string();

  DocTokens docs;
  std::string why;
  if (fs::is_directory(ds.shard_dir) &&
      read_shards(ds.shard_dir, ds.corpus_hash, opt.vocab_size, &docs, &why)) {
    ds.from_cache = true;
  } else {
    if (fs::is_directory(ds.shard_dir)) {
      log_warn(fmt::format("token cache unusable ({}); tokenizing again", why));
      // Temp files of an interrupted write (io::atomic_write names them ".<name>.tmp.<pid>").
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(ds.shard_dir, ec))
        if (e.path().filename().string()[0] == '.') fs::remove(e.path(), ec);
    }
    docs = tokenize(files, opt.split, encode, opt.vocab_size, opt.progress);
    DSV3_CHECK(docs.num_docs() > 0, "data: the inputs hold no documents");
    write_shards(ds.shard_dir, ds.corpus_hash, opt.vocab_size, docs,
                 std::max<int64_t>(1, opt.shard_tokens));
  }
  files.clear();
  ds.num_docs = docs.num_docs();
  split_dataset(docs, opt, &ds);
  return ds;
}

}  // namespace dsv3::train
