// Distributed training benchmark (issue 14): runs `mpirun -np N dsv3 train` for 1, 2 and 4 ranks
// and several layouts on this machine and prints one JSON object built from the runs' own
// metrics (metrics.jsonl: every step record carries the layout, the gradient reduce-scatter's
// bytes, requests, time spent starting/driving it during the backward and the wait it left
// exposed after it, the blocking expert all-to-all time, the dispatch volume and the largest
// rank's memory).
//
// Per layout: tokens/s of the global batch, the step time, the reduction left exposed with it
// overlapped with the backward and with it after the backward (grad_overlap=false: all of the
// reduction is exposed, i.e. its whole cost), the expert all-to-all time, dispatch bytes per
// token (to other ranks, and across nodes) with and without node-limited routing, the bytes one
// rank holds. Beside them, the limit measured in the same run: the FP32 FMA peak of one core.
//
// On a 2-core machine the ranks share the cores: this measures the overhead of the distributed
// step and the overlap, not a speed-up.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "core/fma_peak.hpp"
#include "nlohmann/json.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kUsage =
    "usage: bench_dist [--dsv3 PATH] [--mpirun PATH] [--steps N] [--skip K] [--only a,b,...]\n"
    "                  [--batch B] [--seq-len T] [--precision fp32|bf16|fp8]\n"
    "Runs `mpirun -np N dsv3 train` for 1, 2 and 4 ranks and several layouts (the built-in\n"
    "small V3 with 16 routed experts, top-4) and prints JSON per layout: tokens/s, step time,\n"
    "gradient reduction exposed with and without overlap, expert all-to-all time, dispatch\n"
    "bytes per token with and without node-limited routing, memory per rank. --only picks\n"
    "layouts by name; --precision is the training precision (default fp32; under bf16 and fp8\n"
    "the expert all-to-alls send BF16 / FP8 rows). On 2 cores this measures overhead and\n"
    "overlap, not speed-up.\n";

struct Layout {
  int ranks;
  std::string name;
  std::vector<std::string> sets;
  int threads;  // per rank
};

std::vector<Layout> layouts() {
  const std::vector<std::string> no_limit = {"ranks_per_node=2", "max_nodes=2"};
  return {
      {1, "1rank", {}, 2},
      {1, "1rank-1thread", {}, 1},
      {2, "dp2", {"dp=2", "ep=1"}, 1},
      {2, "dp2-bucket4mb", {"dp=2", "ep=1", "grad_bucket_mb=4"}, 1},
      {2, "dp2-after-backward", {"dp=2", "ep=1", "grad_overlap=false"}, 1},
      {2, "ep2", {"dp=1", "ep=2"}, 1},
      {2, "ep2-after-backward", {"dp=1", "ep=2", "grad_overlap=false"}, 1},
      {4, "dp2xep2", {"dp=2", "ep=2"}, 1},
      {4, "dp2xep2-after-backward", {"dp=2", "ep=2", "grad_overlap=false"}, 1},
      {4, "ep4-2nodes-no-limit", {"dp=1", "ep=4", "ranks_per_node=2", "max_nodes=2"}, 1},
      {4, "ep4-2nodes-max1", {"dp=1", "ep=4", "ranks_per_node=2", "max_nodes=1"}, 1},
      {4, "ep4-4nodes-no-limit", {"dp=1", "ep=4", "ranks_per_node=1", "max_nodes=4"}, 1},
      {4, "ep4-4nodes-max2", {"dp=1", "ep=4", "ranks_per_node=1", "max_nodes=2"}, 1},
  };
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

}  // namespace

int main(int argc, char** argv) {
  std::string dsv3 = std::string(DSV3_BINARY_DIR) + "/bin/dsv3", mpirun = "mpirun", only,
              precision = "fp32";
  int steps = 10, skip = 2;
  int64_t batch = 8, seq_len = 128;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_dist: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--dsv3") {
      dsv3 = next();
    } else if (a == "--mpirun") {
      mpirun = next();
    } else if (a == "--steps") {
      steps = std::stoi(next());
    } else if (a == "--skip") {
      skip = std::stoi(next());
    } else if (a == "--only") {
      only = "," + next() + ",";
    } else if (a == "--batch") {
      batch = std::stoll(next());
    } else if (a == "--seq-len") {
      seq_len = std::stoll(next());
    } else if (a == "--precision") {
      precision = next();
    } else {
      std::fprintf(stderr, "bench_dist: unknown flag %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (steps <= skip + 1 || skip < 1 || batch % 4 != 0) {
    std::fprintf(stderr, "bench_dist: need --steps > --skip + 1, --skip >= 1, --batch %% 4 == 0\n");
    return 2;
  }
  // As root OpenMPI wants explicit consent.
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  const fs::path root = fs::temp_directory_path() / ("dsv3-bench-dist-" + std::to_string(getpid()));
  fs::create_directories(root);
  json results = json::array();
  std::string tokenizer;
  int rc = 0;
  for (const Layout& l : layouts()) {
    if (!only.empty() && only.find("," + l.name + ",") == std::string::npos) continue;
    const fs::path out = root / l.name;
    std::string cmd = quote(mpirun) + " --oversubscribe --bind-to none -x OMP_NUM_THREADS=" +
                      std::to_string(l.threads) + " -np " + std::to_string(l.ranks) + " " +
                      quote(dsv3) + " train --out " + quote(out.string()) + " --steps " +
                      std::to_string(steps) + " --checkpoint-every 0 --quiet --threads " +
                      std::to_string(l.threads);
    if (!tokenizer.empty()) cmd += " --tokenizer " + quote(tokenizer);
    std::vector<std::string> sets = {"batch=" + std::to_string(batch),
                                     "seq_len=" + std::to_string(seq_len),
                                     "precision=" + precision,
                                     "eval_every=0",
                                     "eval_batches=1",
                                     "sample_tokens=0",
                                     "n_routed_experts=16",
                                     "num_experts_per_tok=4",
                                     "n_group=1",
                                     "topk_group=1"};
    sets.insert(sets.end(), l.sets.begin(), l.sets.end());
    for (const auto& s : sets) cmd += " --set " + quote(s);
    cmd += " > " + quote((root / (l.name + ".log")).string()) + " 2>&1";
    std::fprintf(stderr, "bench_dist: %s\n", cmd.c_str());
    const dsv3::bench::Timer wall;
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "bench_dist: layout %s failed; its log:\n", l.name.c_str());
      std::ifstream log(root / (l.name + ".log"));
      std::string line;
      while (std::getline(log, line)) std::fprintf(stderr, "  %s\n", line.c_str());
      rc = 1;
      break;
    }
    const double wall_s = wall.seconds();
    if (tokenizer.empty()) {
      tokenizer = (root / "tokenizer").string();
      fs::copy(out / "tokenizer", tokenizer, fs::copy_options::recursive);
    }
    std::vector<json> st;
    std::ifstream m(out / "metrics.jsonl");
    std::string line;
    while (std::getline(m, line)) {
      json j = json::parse(line);
      if (j.value("kind", "") == "step") st.push_back(std::move(j));
    }
    if (int(st.size()) != steps) {
      std::fprintf(stderr, "bench_dist: %s wrote %zu step records, not %d\n", l.name.c_str(),
                   st.size(), steps);
      rc = 1;
      break;
    }
    std::vector<double> tps, step_s, exposed, in_bwd, a2a, disp, cross, comb;
    double mem = 0;
    for (int k = skip; k < steps; ++k) {
      const json& s = st[size_t(k)];
      tps.push_back(s["tokens_per_s"].get<double>());
      step_s.push_back(s["time_s"].get<double>() - st[size_t(k - 1)]["time_s"].get<double>());
      mem = std::max(mem, s["mem_bytes"].get<double>());
      if (!s.contains("dist")) continue;
      const json& d = s["dist"];
      exposed.push_back(d["grad_sync"]["exposed_wait_s"].get<double>());
      in_bwd.push_back(d["grad_sync"].value("in_backward_s", 0.0));
      if (d.contains("dispatch")) {
        a2a.push_back(d["dispatch"]["all_to_all_s"].get<double>());
        disp.push_back(d["dispatch"]["bytes_per_token"].get<double>());
        cross.push_back(d["dispatch"]["cross_node_bytes_per_token"].get<double>());
        comb.push_back(d["dispatch"].value("combine_bytes_per_token", 0.0));
      }
    }
    json r = {{"layout", l.name},
              {"ranks", l.ranks},
              {"threads_per_rank", l.threads},
              {"sets", l.sets},
              {"wall_s", wall_s},
              {"tokens_per_s", mean(tps)},
              {"step_s", mean(step_s)},
              {"mem_mib_per_rank", mem / 1048576.0},
              {"loss_last", st.back()["loss"]}};
    if (!exposed.empty()) {
      const json& gs = st.back()["dist"]["grad_sync"];
      r["grad_sync"] = {{"bytes", gs["bytes"]},
                        {"requests", gs.value("requests", 0)},
                        {"overlap", gs.value("overlap", true)},
                        {"exposed_wait_s", mean(exposed)},
                        {"in_backward_s", mean(in_bwd)}};
    }
    if (!a2a.empty())
      r["dispatch"] = {{"all_to_all_s", mean(a2a)},
                       {"bytes_per_token", mean(disp)},
                       {"cross_node_bytes_per_token", mean(cross)},
                       {"combine_bytes_per_token", mean(comb)},
                       {"wire", st.back()["dist"]["dispatch"].value("wire", "")},
                       {"rows_to_rank", st.back()["dist"]["dispatch"]["rows_to_rank"]}};
    std::fprintf(stderr, "bench_dist: %s\n", r.dump().c_str());
    results.push_back(std::move(r));
  }
  fs::remove_all(root);
  const dsv3::FmaPeak peak = dsv3::measure_fp32_fma_peak(1);
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  const json j = {
      {"benchmark", "bench_dist"},
      {"date", date},
      {"cpus", std::thread::hardware_concurrency()},
      {"fp32_fma_peak_gflops_1thread", peak.flops / 1e9},
      {"model", "built-in small V3, 16 routed experts, top-4, no group limit"},
      {"precision", precision},
      {"batch", batch},
      {"seq_len", seq_len},
      {"steps", steps},
      {"steps_skipped", skip},
      {"note", "the ranks share this machine's cores: overhead and overlap, not speed-up"},
      {"results", results}};
  std::printf("%s\n", j.dump(1).c_str());
  return rc;
}
