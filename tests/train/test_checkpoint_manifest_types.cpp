// manifest.json fields of the wrong JSON type are refused with a dsv3::Error naming the
// checkpoint (fuzz/fuzz_checkpoint_manifest: "format": 3 escaped load_checkpoint as the JSON
// library's type_error, which ends the program where only dsv3::Error is caught).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/file.hpp"
#include "train/checkpoint.hpp"
#include "train/test_trainer_util.hpp"

using nlohmann::json;
using namespace dsv3::train;

namespace {

TEST(CheckpointManifestTypes, WrongTypesAreErrorsNotLibraryExceptions) {
  const std::string run = dsv3::train::testing::test_dir("manifest-types");
  CheckpointData d;
  d.step = 3;
  d.tensors["w"] = Blob::f32({1, 2, 3});
  save_checkpoint(run, d, 1);
  const std::string dir = checkpoint_path(run, 3), path = dir + "/manifest.json";
  const json good = json::parse(dsv3::io::read_file(path));
  EXPECT_EQ(load_checkpoint(dir).step, 3);
  const std::vector<std::pair<json::json_pointer, json>> cases = {
      {json::json_pointer("/format"), 3},
      {json::json_pointer("/version"), "1"},
      {json::json_pointer("/version"), 1e300},
      {json::json_pointer("/step"), "3"},
      {json::json_pointer("/files/meta.json/size"), "57"},
      {json::json_pointer("/files/meta.json/size"), -1e300},
      {json::json_pointer("/files/meta.json/hash64"), 7},
  };
  for (const auto& [where, value] : cases) {
    json m = good;
    m[where] = value;
    dsv3::io::atomic_write(path, m.dump());
    try {
      load_checkpoint(dir);
      ADD_FAILURE() << where.to_string() << " = " << value.dump() << " accepted";
    } catch (const dsv3::Error& e) {
      EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << where.to_string() << " = " << value.dump() << ": " << e.what();
    }
  }
  std::filesystem::remove_all(run);
}

}  // namespace
