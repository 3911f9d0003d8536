// The training run directory under stress (issue 12): a run stopped before its first checkpoint
// resumes from the start, a second writer is refused, meta.json's model_config is the one model
// of a checkpoint on resume and export alike, and a non-finite loss stops the run before the
// step is applied, leaving the last checkpoint as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "core/error.hpp"
#include "io/file.hpp"
#include "train/checkpoint.hpp"
#include "train/export.hpp"
#include "train/metrics.hpp"
#include "train/run_lock.hpp"
#include "train/test_trainer_util.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;
using namespace dsv3;
using namespace dsv3::train;
using namespace dsv3::train::testing;

namespace {

std::vector<double> step_losses(const std::string& run_dir) {
  std::vector<double> r;
  for (const auto& s : read_metrics(run_dir + "/metrics.jsonl").steps) r.push_back(s.loss);
  return r;
}

// Runs f, which must throw dsv3::Error with `part` in its message.
template <typename F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one saying '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// Rewrites checkpoint `step` of run_dir after edit(ck) (manifest and checksums made anew).
template <typename F>
void edit_checkpoint(const std::string& run_dir, int64_t step, F&& edit) {
  CheckpointData ck = load_checkpoint(checkpoint_path(run_dir, step));
  edit(ck);
  save_checkpoint(run_dir, ck, 0);
}

}  // namespace

// (a) A run stopped at step 3, before its first checkpoint (step 4): --resume starts it over from
// step 0 with its recorded options and repeats the uninterrupted run's losses bit for bit.
TEST(RunDir, StoppedBeforeFirstCheckpointResumesFromStart) {
  const std::string root = test_dir("rundir-early");
  TrainConfig cfg = short_run_config(root, 6, 4);
  RunOptions a = quiet_run(root + "/a");
  ASSERT_TRUE(Trainer(cfg, a).run().finished);

  RunOptions b = a;
  b.run_dir = root + "/b";
  b.stop_after = 3;
  EXPECT_FALSE(Trainer(cfg, b).run().finished);
  ASSERT_TRUE(list_checkpoints(b.run_dir).empty());
  // Starting the same run again is refused, pointing at --resume ...
  expect_error([&] { Trainer(cfg, b); }, "--resume");
  // ... and --resume continues it, from the start.
  RunOptions rb = quiet_run(b.run_dir);
  Trainer t = Trainer::resume(rb);
  bool warned = false;
  for (const auto& w : t.warnings()) warned = warned || w.find("step 0") != std::string::npos;
  EXPECT_TRUE(warned) << "no warning says the run starts over from step 0";
  ASSERT_TRUE(t.run().finished);
  const auto la = step_losses(a.run_dir), lb = step_losses(b.run_dir);
  ASSERT_EQ(la.size(), 6u);
  ASSERT_EQ(lb.size(), la.size());
  for (size_t i = 0; i < la.size(); ++i)
    EXPECT_EQ(std::memcmp(&la[i], &lb[i], sizeof(double)), 0)
        << "step " << i + 1 << ": " << la[i] << " vs " << lb[i];
  EXPECT_EQ(io::read_file(a.run_dir + "/final/model.safetensors"),
            io::read_file(b.run_dir + "/final/model.safetensors"));

  // A directory that no run ever started in: the message says how to start one.
  fs::create_directories(root + "/empty");
  RunOptions e;
  e.run_dir = root + "/empty";
  expect_error([&] { Trainer::resume(e); }, "dsv3 train --out");
}

// (b) While one writer holds the run dir, a second one (fresh, --overwrite or --resume) is
// refused with a message saying the directory is in use.
TEST(RunDir, SecondWriterIsRefused) {
  const std::string root = test_dir("rundir-lock");
  TrainConfig cfg = short_run_config(root, 4, 2);
  RunOptions r = quiet_run(root + "/run", 2);
  Trainer(cfg, r).run();
  {
    RunDirLock held(r.run_dir);  // another writer
    RunOptions o = r;
    o.overwrite = true;
    o.stop_after = -1;
    expect_error([&] { Trainer(cfg, o).run(); }, "in use by another dsv3 train");
    RunOptions rr = quiet_run(r.run_dir);
    expect_error([&] { Trainer::resume(rr); }, "in use by another dsv3 train");
  }
  // The lock goes with its holder: now the run continues.
  RunOptions rr = quiet_run(r.run_dir);
  EXPECT_TRUE(Trainer::resume(rr).run().finished);
}

// (c) A checkpoint whose meta.json model_config says another model than its train_config is
// refused by --resume and by export alike (export used to trust model_config, resume used to
// rebuild the model from train_config and ignore it).
TEST(RunDir, MetaModelConfigIsCheckedOnResumeAndExport) {
  const std::string root = test_dir("rundir-meta");
  TrainConfig cfg = short_run_config(root, 4, 2);
  RunOptions r = quiet_run(root + "/run", 2);
  Trainer(cfg, r).run();
  // Both copies agree: export works.
  EXPECT_EQ(export_checkpoint(r.run_dir, 2, root + "/ok", DType::F32), 2);
  edit_checkpoint(r.run_dir, 2,
                  [](CheckpointData& ck) { ck.meta["model_config"]["rms_norm_eps"] = 1e-2; });
  expect_error([&] { export_checkpoint(r.run_dir, 2, root + "/bad", DType::F32); }, "rms_norm_eps");
  RunOptions rr = quiet_run(r.run_dir);
  expect_error([&] { Trainer::resume(rr).run(); }, "model_config differs");
}

// (e) A non-finite loss (here from a NaN planted in the final norm of the step-2 checkpoint)
// stops the run at the next step with a message naming it; nothing of that step is written and
// the last checkpoint is byte for byte what it was.
TEST(RunDir, NonFiniteLossStopsTheStep) {
  const std::string root = test_dir("rundir-nan");
  TrainConfig cfg = short_run_config(root, 4, 2);
  RunOptions r = quiet_run(root + "/run", 2);
  Trainer(cfg, r).run();
  edit_checkpoint(r.run_dir, 2, [](CheckpointData& ck) {
    Blob& b = ck.tensors.at("param.model.norm.weight");
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(b.bytes.data(), &nan, sizeof nan);
  });
  const std::string ck2 = checkpoint_path(r.run_dir, 2);
  const std::string tensors = io::read_file(ck2 + "/tensors.safetensors");
  const std::string manifest = io::read_file(ck2 + "/manifest.json");
  RunOptions rr = quiet_run(r.run_dir);
  expect_error([&] { Trainer::resume(rr).run(); }, "step 3: the loss is not finite");
  EXPECT_EQ(list_checkpoints(r.run_dir), (std::vector<int64_t>{2}));
  EXPECT_EQ(io::read_file(ck2 + "/tensors.safetensors"), tensors);
  EXPECT_EQ(io::read_file(ck2 + "/manifest.json"), manifest);
  EXPECT_EQ(read_metrics(r.run_dir + "/metrics.jsonl").steps.size(), 2u);
}
