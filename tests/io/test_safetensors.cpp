// safetensors loader tests (io/safetensors.hpp): writer/reader round trip over every dtype and
// degenerate shape, one corrupted file per validation rule with its specific error (the message
// must name the file and the tensor), sharded checkpoints through model.safetensors.index.json,
// every truncation and seeded random header corruption (errors, never crashes), and the shipped
// reference checkpoints.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "io/file.hpp"
#include "io/safetensors.hpp"

using namespace dsv3;
using namespace dsv3::io;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Runs fn, which must throw dsv3::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
    return;
  }
  ADD_FAILURE() << "no dsv3::Error thrown";
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string u64le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(n >> (8 * i)));
  return s;
}

// A file with the given header text and `data_bytes` bytes of data (values 0, 1, 2, ...).
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = char(i);
  return u64le(header.size()) + header + data;
}

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("dsv3_io_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes `header` + data to a file named `name` and expects opening it to fail with `parts`
  // (the file name is always required in the message).
  void expect_bad(const std::string& name, const std::string& bytes,
                  std::initializer_list<std::string> parts) {
    SCOPED_TRACE(name);
    spit(path(name), bytes);
    expect_error([&] { SafetensorsFile::open(path(name)); }, {path(name)});
    expect_error([&] { SafetensorsFile::open(path(name)); }, parts);
  }

  fs::path dir_;
};

// The tensors of the round-trip file: every dtype, a scalar and zero-size shapes.
struct Sample {
  std::vector<float> f32 = {1.5f, -2.25f, 0.0f, 3e-8f, -1e30f, 7.0f};  // [2, 3]
  std::vector<uint16_t> bf16;                                          // [4]
  std::vector<uint16_t> f16;                                           // [2, 2]
  std::vector<uint8_t> f8;                                             // [3, 5]
  int32_t scalar = -123456789;                                         // []
  std::vector<int64_t> i64 = {5, -6, 2147483647};                      // [3]

  Sample() {
    for (float x : {1.0f, -0.5f, 3.140625f, 65280.0f}) bf16.push_back(f32_to_bf16(x));
    for (float x : {1.0f, -2.0f, 0.099975586f, 65504.0f}) f16.push_back(f32_to_f16(x));
    for (int i = 0; i < 15; ++i) f8.push_back(uint8_t(i * 17));
  }

  void add_to(SafetensorsWriter& w) const {
    w.add_f32("a.f32", {2, 3}, f32.data());
    w.add("b.bf16", DType::BF16, {4}, bf16.data());
    w.add("c.f16", DType::F16, {2, 2}, f16.data());
    w.add("d.f8", DType::F8_E4M3, {3, 5}, f8.data());
    w.add("e.scalar", DType::I32, {}, &scalar);
    w.add("f.empty", DType::F32, {0, 4}, nullptr);
    w.add("g.i64", DType::I64, {3}, i64.data());
    w.add("h.empty_bf16", DType::BF16, {5, 0}, nullptr);
  }
};

}  // namespace

TEST_F(Safetensors, RoundTripEveryDtypeAndShape) {
  Sample s;
  SafetensorsWriter w;
  s.add_to(w);
  w.set_metadata("format", "pt");
  EXPECT_EQ(w.size(), 8u);
  w.write(path("rt.safetensors"));

  auto f = SafetensorsFile::open(path("rt.safetensors"));
  EXPECT_EQ(f->path(), path("rt.safetensors"));
  ASSERT_EQ(f->tensors().size(), 8u);
  EXPECT_EQ(f->metadata().at("format"), "pt");

  // The data section starts 8-byte aligned (the writer pads the header with spaces).
  const std::string bytes = slurp(path("rt.safetensors"));
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(bytes[size_t(i)]);
  EXPECT_EQ((8 + hlen) % 8, 0u);
  EXPECT_EQ(bytes[8], '{');

  const TensorInfo& a = f->get("a.f32");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.nbytes, 24u);
  EXPECT_EQ(a.file, path("rt.safetensors"));
  EXPECT_EQ(read_f32(a), s.f32);

  const TensorInfo& b = f->get("b.bf16");
  EXPECT_EQ(b.dtype, DType::BF16);
  EXPECT_EQ(b.shape_str(), "[4]");
  EXPECT_EQ(read_f32(b), (std::vector<float>{1.0f, -0.5f, 3.140625f, 65280.0f}));

  const TensorInfo& c = f->get("c.f16");
  EXPECT_EQ(c.dtype, DType::F16);
  std::vector<float> cf = read_f32(c);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(cf[i], f16_to_f32(s.f16[i]));
  EXPECT_EQ(cf[3], 65504.0f);

  const TensorInfo& d = f->get("d.f8");
  EXPECT_EQ(d.dtype, DType::F8_E4M3);
  EXPECT_EQ(d.nbytes, 15u);
  EXPECT_EQ(std::memcmp(d.data, s.f8.data(), 15), 0);
  std::vector<float> df = read_f32(d);
  for (size_t i = 0; i < 15; ++i) {
    float want = fp8_e4m3_to_f32(s.f8[i]);
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(df[i])) << i;
    else
      EXPECT_EQ(df[i], want) << i;
  }

  const TensorInfo& e = f->get("e.scalar");
  EXPECT_TRUE(e.shape.empty());
  EXPECT_EQ(e.numel(), 1);
  EXPECT_EQ(e.shape_str(), "[]");
  EXPECT_EQ(read_i32(e), (std::vector<int32_t>{s.scalar}));

  for (const char* name : {"f.empty", "h.empty_bf16"}) {
    const TensorInfo& z = f->get(name);
    EXPECT_EQ(z.numel(), 0) << name;
    EXPECT_EQ(z.nbytes, 0u) << name;
    EXPECT_TRUE(read_f32(z).empty()) << name;
  }
  EXPECT_EQ(f->get("f.empty").shape, (std::vector<int64_t>{0, 4}));

  EXPECT_EQ(read_i32(f->get("g.i64")), (std::vector<int32_t>{5, -6, 2147483647}));

  EXPECT_EQ(f->find("nope"), nullptr);
  expect_error([&] { f->get("nope"); }, {"missing tensor 'nope'", path("rt.safetensors")});
  expect_error([&] { read_f32(e); }, {"expected a float dtype", "e.scalar", "I32"});
  expect_error([&] { read_i32(a); }, {"expected I32 or I64", "a.f32", "F32"});

  // Rewriting over the same name replaces the file atomically and leaves no temp file behind.
  SafetensorsWriter w2;
  w2.add_f32("only", {1}, s.f32.data());
  w2.write(path("rt.safetensors"));
  EXPECT_EQ(SafetensorsFile::open(path("rt.safetensors"))->tensors().size(), 1u);
  int files = 0;
  for ([[maybe_unused]] const auto& ent : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1);
}

TEST_F(Safetensors, WriterRefusesWhatTheReaderWouldRefuse) {
  float x = 1;
  SafetensorsWriter w;
  expect_error([&] { w.add("__metadata__", DType::F32, {1}, &x); }, {"__metadata__"});
  expect_error([&] { w.add("neg", DType::F32, {-1, 2}, &x); }, {"negative dimension", "neg"});
  w.add_f32("twice", {1}, &x);
  w.add_f32("twice", {1}, &x);
  expect_error([&] { w.write(path("dup.safetensors")); },
               {"added twice", "twice", path("dup.safetensors")});
  EXPECT_FALSE(fs::exists(path("dup.safetensors")));
}

TEST_F(Safetensors, HeaderLengthErrors) {
  expect_bad("short.safetensors", std::string("\x05\0\0\0\0", 5), {"shorter than the 8-byte"});
  expect_bad("empty.safetensors", "", {"0 bytes"});
  // Header length 1000 but only a few bytes follow.
  expect_bad("trunc_header.safetensors", u64le(1000) + "{\"a\":", {"truncated", "1000"});
  expect_bad("huge_header.safetensors", u64le(1ull << 40) + "{}", {"100 MiB limit"});
  expect_bad("max_header.safetensors", u64le(~0ull) + "{}", {"100 MiB limit"});
}

TEST_F(Safetensors, CorruptedCopiesOfAValidFile) {
  Sample s;
  SafetensorsWriter w;
  s.add_to(w);
  w.write(path("good.safetensors"));
  const std::string good = slurp(path("good.safetensors"));
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(good[size_t(i)]);
  const std::string header = good.substr(8, hlen);

  // Data section cut short: the last tensor by offset (g.i64) reaches past the end.
  expect_bad("cut.safetensors", good.substr(0, good.size() - 3),
             {"'g.i64'", "out of range", "file truncated?"});

  // Header length field overshooting into the data (whose first bytes are zero here).
  ASSERT_EQ(good[8 + hlen], '\0');
  expect_bad("hlen.safetensors", u64le(hlen + 1) + good.substr(8), {"header contains a NUL byte"});
  expect_bad("nul.safetensors", raw_file(std::string("{}\0{\"junk\":", 9), 0),
             {"header contains a NUL byte"});

  // Same-length edits of the header text.
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string h = header;
    size_t at = h.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    EXPECT_EQ(from.size(), to.size());
    h.replace(at, from.size(), to);
    return u64le(hlen) + h + good.substr(8 + hlen);
  };
  expect_bad("dtype.safetensors", edited("\"BF16\"", "\"BX16\""),
             {"unknown dtype 'BX16'", "'b.bf16'"});
  expect_bad("shape.safetensors", edited("\"shape\":[2,3]", "\"shape\":[3,3]"),
             {"'a.f32'", "data_offsets span 24 bytes", "shape [3, 3] need 9 x 4"});
  expect_bad("neg2.safetensors", edited("\"shape\":[2,2]", "\"shape\":[-42]"),
             {"'c.f16'", "shape entries must be non-negative integers"});
  expect_bad("notobject.safetensors", edited("{", "["), {"bad JSON header"});
}

TEST_F(Safetensors, EachHeaderRuleHasItsOwnError) {
  const std::string f32_ok = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  auto one = [](const std::string& entry) { return "{\"t\":{" + entry + "}}"; };

  expect_bad("badjson.safetensors", raw_file("{\"t\": {\"dtype\": ", 8), {"bad JSON header"});
  expect_bad("array.safetensors", raw_file("[1, 2]", 8), {"header is not a JSON object"});
  expect_bad("string.safetensors", raw_file("\"hello\"", 8), {"header is not a JSON object"});
  expect_bad("entry.safetensors", raw_file("{\"t\": 5}", 8), {"'t'", "entry is not an object"});
  expect_bad("nodtype.safetensors", raw_file(one(R"("shape":[2],"data_offsets":[0,8])"), 8),
             {"'t'", "missing dtype"});
  expect_bad("dtypenum.safetensors",
             raw_file(one(R"("dtype":7,"shape":[2],"data_offsets":[0,8])"), 8),
             {"'t'", "missing dtype"});
  expect_bad("unknown.safetensors",
             raw_file(one(R"("dtype":"F7","shape":[2],"data_offsets":[0,8])"), 8),
             {"'t'", "unknown dtype 'F7'"});
  expect_bad("noshape.safetensors", raw_file(one(R"("dtype":"F32","data_offsets":[0,8])"), 8),
             {"'t'", "missing shape"});
  for (const char* shape :
       {"[-1]", "[2.5]", "[\"2\"]", "[[2]]", "[true]", "[18446744073709551615]"})
    expect_bad(
        "shape.safetensors",
        raw_file(one(std::string(R"("dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,8])"),
                 8),
        {"'t'", "shape entries must be non-negative integers"});
  expect_bad(
      "overflow.safetensors",
      raw_file(one(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0])"), 8),
      {"'t'", "shape overflows"});
  // 2^61 elements of 8 bytes is 2^64 bytes, which wraps to 0 in 64-bit arithmetic.
  expect_bad(
      "wrap.safetensors",
      raw_file(one(R"("dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0])"), 8),
      {"'t'", "data_offsets span 0 bytes"});
  expect_bad("nooffsets.safetensors", raw_file(one(R"("dtype":"F32","shape":[2])"), 8),
             {"'t'", "data_offsets must be two non-negative integers"});
  for (const char* off : {"[0]", "[-8,0]", "[0,8.0]", "\"0,8\"", "[0,8,9]"})
    expect_bad("offsets.safetensors",
               raw_file(one(std::string(R"("dtype":"F32","shape":[2],"data_offsets":)") + off), 8),
               {"'t'", "data_offsets must be two non-negative integers"});
  expect_bad("reversed.safetensors",
             raw_file(one(R"("dtype":"F32","shape":[0],"data_offsets":[8,0])"), 8),
             {"'t'", "data_offsets [8, 0] out of range"});
  expect_bad("beyond.safetensors",
             raw_file(one(R"("dtype":"F32","shape":[2])"
                          R"(,"data_offsets":[4,12])"),
                      8),
             {"'t'", "out of range (data section is 8 bytes; file truncated?)"});
  expect_bad("span.safetensors",
             raw_file(one(R"("dtype":"BF16","shape":[2,3],"data_offsets":[0,8])"), 8),
             {"'t'", "data_offsets span 8 bytes but dtype BF16 and shape [2, 3] need 6 x 2"});
  expect_bad("meta.safetensors", raw_file(R"({"__metadata__": [1]})", 0),
             {"__metadata__ is not an object"});
  expect_bad("metaval.safetensors", raw_file(R"({"__metadata__": {"k": 1}})", 0),
             {"__metadata__ value of 'k' is not a string"});

  // A well-formed single tensor opens, so the failures above are each caused by their one edit.
  spit(path("ok.safetensors"), raw_file(one(f32_ok), 8));
  EXPECT_EQ(SafetensorsFile::open(path("ok.safetensors"))->get("t").nbytes, 8u);
}

TEST_F(Safetensors, OverlappingTensors) {
  expect_bad("overlap.safetensors",
             raw_file(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                      R"("y":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                      24),
             {"'x' and 'y' overlap"});
  expect_bad("same.safetensors",
             raw_file(R"({"x":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                      R"("y":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                      8),
             {"overlap", "'x'", "'y'"});
  // An empty tensor sorted between two overlapping ones must not hide their overlap.
  expect_bad("hidden.safetensors",
             raw_file(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                      R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                      R"("c":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                      32),
             {"'a' and 'c' overlap"});
  // Adjacent tensors, holes and empty tensors anywhere are fine.
  spit(path("fine.safetensors"),
       raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                R"("c":{"dtype":"U8","shape":[4],"data_offsets":[8,12]},)"
                R"("d":{"dtype":"I8","shape":[2],"data_offsets":[20,22]}})",
                24));
  auto f = SafetensorsFile::open(path("fine.safetensors"));
  EXPECT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->get("d").data[0], 20);
}

TEST_F(Safetensors, NotARegularFile) {
  expect_error([&] { SafetensorsFile::open(path("absent.safetensors")); },
               {"cannot open", path("absent.safetensors")});
  expect_error([&] { SafetensorsFile::open(dir_.string()); },
               {"not a regular file", dir_.string()});
  expect_error([&] { read_file(dir_.string()); }, {"is a directory", dir_.string()});
}

TEST_F(Safetensors, EveryTruncationIsAnError) {
  Sample s;
  SafetensorsWriter w;
  s.add_to(w);
  w.write(path("good.safetensors"));
  const std::string good = slurp(path("good.safetensors"));
  for (size_t n = 0; n < good.size(); ++n) {
    spit(path("t.safetensors"), good.substr(0, n));
    EXPECT_THROW(SafetensorsFile::open(path("t.safetensors")), Error) << "length " << n;
  }
}

TEST_F(Safetensors, RandomHeaderCorruptionNeverCrashes) {
  const uint64_t seed = 8675309;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  Sample s;
  SafetensorsWriter w;
  s.add_to(w);
  w.write(path("good.safetensors"));
  const std::string good = slurp(path("good.safetensors"));
  const char alphabet[] = "0123456789-[]{},.:\"eE FIBU8_";
  int opened = 0, refused = 0;
  for (int iter = 0; iter < 500; ++iter) {
    std::string bad = good;
    const int flips = 1 + int(rng.below(3));
    for (int k = 0; k < flips; ++k) {
      // Mostly inside the header (where validation lives), sometimes in the length field.
      size_t at = rng.below(8) == 0 ? rng.below(8) : 8 + rng.below(good.size() - 8);
      bad[at] = rng.below(2) ? alphabet[rng.below(sizeof(alphabet) - 1)] : char(rng.below(256));
    }
    spit(path("c.safetensors"), bad);
    try {
      auto f = SafetensorsFile::open(path("c.safetensors"));
      // Whatever opened is self-consistent.
      for (const auto& t : f->tensors()) {
        EXPECT_EQ(t.nbytes, size_t(t.numel()) * dtype_size(t.dtype)) << t.name;
      }
      ++opened;
    } catch (const Error&) {
      ++refused;
    }
  }
  std::printf("opened %d, refused %d\n", opened, refused);
  EXPECT_GT(refused, 0);
}

TEST_F(Safetensors, StoreGetChecksNameAndShape) {
  Sample s;
  SafetensorsWriter w;
  s.add_to(w);
  fs::create_directories(dir_ / "ckpt");
  w.write((dir_ / "ckpt" / "model.safetensors").string());

  TensorStore st = TensorStore::open_dir((dir_ / "ckpt").string());
  EXPECT_EQ(st.where(), (dir_ / "ckpt").string());
  EXPECT_EQ(st.names().size(), 8u);
  EXPECT_EQ(st.get("a.f32", {2, 3}).nbytes, 24u);
  EXPECT_EQ(st.get("e.scalar", {}).numel(), 1);
  EXPECT_EQ(st.find("zzz"), nullptr);
  expect_error([&] { st.get("zzz"); }, {"missing tensor 'zzz'", (dir_ / "ckpt").string()});
  expect_error([&] { st.get("zzz", {1}); }, {"missing tensor 'zzz'"});
  expect_error(
      [&] {
        st.get("a.f32", {3, 2});
      },
      {"'a.f32' has shape [2, 3], expected [3, 2]", "model.safetensors"});
  expect_error([&] { st.get("e.scalar", {1}); }, {"'e.scalar' has shape [], expected [1]"});

  TensorStore sf = TensorStore::open_file((dir_ / "ckpt" / "model.safetensors").string());
  EXPECT_EQ(sf.names(), st.names());
  expect_error([&] { sf.get("zzz"); }, {"missing tensor 'zzz'", "model.safetensors"});

  expect_error([&] { TensorStore::open_dir(path("nodir")); }, {"not a directory", "nodir"});
  fs::create_directories(dir_ / "emptydir");
  expect_error([&] { TensorStore::open_dir((dir_ / "emptydir").string()); },
               {"neither model.safetensors nor model.safetensors.index.json", "emptydir"});
}

namespace {

// Writes two shards (x.* in shard 1, y.* in shard 2) and returns the valid index JSON.
json write_shards(const fs::path& dir) {
  std::vector<float> v = {1, 2, 3, 4, 5, 6};
  SafetensorsWriter a, b;
  a.add_f32("x.a", {2, 3}, v.data());
  a.add_f32("x.b", {6}, v.data());
  b.add_f32("y.a", {3}, v.data() + 3);
  b.add("y.b", DType::BF16, {0}, nullptr);
  a.write((dir / "model-00001-of-00002.safetensors").string());
  b.write((dir / "model-00002-of-00002.safetensors").string());
  json idx = {{"metadata", {{"total_size", 36}}},
              {"weight_map",
               {{"x.a", "model-00001-of-00002.safetensors"},
                {"x.b", "model-00001-of-00002.safetensors"},
                {"y.a", "model-00002-of-00002.safetensors"},
                {"y.b", "model-00002-of-00002.safetensors"}}}};
  return idx;
}

}  // namespace

TEST_F(Safetensors, ShardedCheckpoint) {
  const fs::path d = dir_ / "sharded";
  fs::create_directories(d);
  json idx = write_shards(d);
  const std::string index = (d / "model.safetensors.index.json").string();
  spit(index, idx.dump(2));

  TensorStore st = TensorStore::open_dir(d.string());
  EXPECT_EQ(st.names(), (std::vector<std::string>{"x.a", "x.b", "y.a", "y.b"}));
  EXPECT_EQ(read_f32(st.get("x.a", {2, 3})), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(read_f32(st.get("y.a", {3})), (std::vector<float>{4, 5, 6}));
  EXPECT_EQ(st.get("y.a").file, (d / "model-00002-of-00002.safetensors").string());
  EXPECT_EQ(st.get("x.b").file, (d / "model-00001-of-00002.safetensors").string());
  expect_error(
      [&] {
        st.get("y.a", {1, 3});
      },
      {"'y.a' has shape [3], expected [1, 3]", "model-00002-of-00002.safetensors"});

  auto expect_bad_index = [&](const std::string& text, std::initializer_list<std::string> parts) {
    spit(index, text);
    expect_error([&] { TensorStore::open_dir(d.string()); }, {index});
    expect_error([&] { TensorStore::open_dir(d.string()); }, parts);
  };
  {
    json j = idx;
    j["weight_map"]["x.c"] = "model-00001-of-00002.safetensors";
    spit(index, j.dump());
    expect_error([&] { TensorStore::open_dir(d.string()); },
                 {"tensor 'x.c' is listed in model.safetensors.index.json but not stored there",
                  "model-00001-of-00002.safetensors"});
  }
  {
    json j = idx;
    j["weight_map"]["y.a"] = "model-00003-of-00002.safetensors";
    expect_bad_index(j.dump(), {"weight_map['y.a']", "model-00003-of-00002.safetensors",
                                "does not exist or is not a file"});
  }
  for (const char* fname : {"../model.safetensors", "sub/model.safetensors", "..", ".", ""}) {
    json j = idx;
    j["weight_map"]["x.a"] = fname;
    expect_bad_index(j.dump(), {"weight_map['x.a']", "is not a file in the directory"});
  }
  {
    json j = idx;
    j["weight_map"]["x.a"] = 3;
    expect_bad_index(j.dump(), {"weight_map['x.a'] is not a file name"});
  }
  expect_bad_index(idx.dump().substr(0, 40), {"bad JSON"});
  expect_bad_index("[]", {"missing 'weight_map' object"});
  expect_bad_index(R"({"weight_map": []})", {"missing 'weight_map' object"});

  // A corrupt shard is reported with the shard's own name and tensor.
  spit(index, idx.dump());
  std::string shard = slurp((d / "model-00002-of-00002.safetensors").string());
  spit((d / "model-00002-of-00002.safetensors").string(), shard.substr(0, shard.size() - 1));
  expect_error([&] { TensorStore::open_dir(d.string()); },
               {"model-00002-of-00002.safetensors", "'y.a'", "file truncated?"});
}

TEST(SafetensorsReference, TinyV3Checkpoint) {
  const std::string dir = std::string(DSV3_TEST_DATA) + "/tiny-v3";
  TensorStore st = TensorStore::open_dir(dir);
  const auto names = st.names();
  EXPECT_EQ(names.size(), 207u);
  for (int i = 1; i <= 3; ++i) {
    const std::string n = "model.layers." + std::to_string(i) + ".mlp.gate.e_score_correction_bias";
    const TensorInfo& t = st.get(n, {16});
    EXPECT_EQ(t.dtype, DType::F32) << n;
    for (float x : read_f32(t)) EXPECT_LT(std::fabs(x), 1.0f) << n;  // N(0, 0.05^2)
  }
  EXPECT_EQ(st.get("lm_head.weight", {512, 256}).dtype, DType::BF16);
  EXPECT_EQ(st.get("model.embed_tokens.weight", {512, 256}).dtype, DType::BF16);
  EXPECT_EQ(st.get("model.layers.3.eh_proj.weight", {256, 512}).dtype, DType::BF16);
  EXPECT_EQ(st.get("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {48, 256}).dtype,
            DType::BF16);
  EXPECT_EQ(st.get("model.layers.2.mlp.experts.15.down_proj.weight", {256, 64}).dtype, DType::BF16);
  EXPECT_EQ(st.find("model.layers.1.mlp.experts.16.down_proj.weight"), nullptr);
  // Storage rule of the BF16 case: every tensor BF16 except the router bias.
  for (const auto& n : names) {
    const bool bias = n.find("e_score_correction_bias") != std::string::npos;
    EXPECT_EQ(st.get(n).dtype, bias ? DType::F32 : DType::BF16) << n;
  }
  // RMSNorm weights are 1 + N(0, 0.1^2).
  std::vector<float> norm = read_f32(st.get("model.norm.weight", {256}));
  double mean = 0;
  for (float x : norm) mean += x;
  EXPECT_NEAR(mean / 256, 1.0, 0.05);

  auto model = SafetensorsFile::open(dir + "/model.safetensors");
  EXPECT_EQ(model->metadata().at("format"), "pt");

  auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
  const TensorInfo& tokens = ref->get("tokens");
  EXPECT_EQ(tokens.dtype, DType::I32);
  EXPECT_EQ(tokens.shape, (std::vector<int64_t>{2, 80}));
  for (int32_t id : read_i32(tokens)) {
    EXPECT_GE(id, 2);
    EXPECT_LT(id, 512);
  }
  EXPECT_EQ(ref->get("prefill.logits").shape, (std::vector<int64_t>{2, 80, 512}));
  EXPECT_EQ(ref->get("decode.logits").shape, (std::vector<int64_t>{9, 2, 512}));
  EXPECT_EQ(ref->get("route.layer1.indices").dtype, DType::I32);
  EXPECT_EQ(ref->get("route.mtp.weights").shape, (std::vector<int64_t>{158, 4}));
  EXPECT_EQ(ref->get("rope.freqs_cis_real_imag").shape, (std::vector<int64_t>{80, 8, 2}));
  EXPECT_EQ(ref->get("train.loss").shape, (std::vector<int64_t>{1}));
  int grad = 0, grad_total = 0;
  for (const auto& t : ref->tensors()) {
    if (t.name.rfind("grad.", 0) == 0) {
      ++grad;
      const TensorInfo* w = st.find(t.name.substr(5));
      ASSERT_NE(w, nullptr) << t.name;
      EXPECT_EQ(t.shape, w->shape) << t.name;
      EXPECT_EQ(t.dtype, DType::F32) << t.name;
    }
    if (t.name.rfind("grad_total.", 0) == 0) ++grad_total;
  }
  EXPECT_EQ(grad, 139);
  EXPECT_EQ(grad_total, 207);
}

TEST(SafetensorsReference, TinyV2LiteIsAllF32) {
  TensorStore st = TensorStore::open_dir(std::string(DSV3_TEST_DATA) + "/tiny-v2lite");
  EXPECT_EQ(st.get("lm_head.weight", {512, 256}).dtype, DType::F32);
  EXPECT_EQ(st.get("model.layers.1.mlp.shared_experts.down_proj.weight", {256, 128}).dtype,
            DType::F32);
  for (const auto& n : st.names()) EXPECT_EQ(st.get(n).dtype, DType::F32) << n;
}
