// Implementation of metrics.hpp: JSON records, the appending writer, resume truncation and the
// tolerant reader.
#include "train/metrics.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "io/file.hpp"

namespace dsv3::train {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// NaN means "no value": the key is left out rather than written as null.
void put(json& j, const char* key, double v) {
  if (std::isfinite(v)) j[key] = v;
}

double get(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : kNoValue;
}

std::vector<std::string> split_lines(const std::string& text, bool* torn) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      *torn = true;  // no newline: the writer was killed mid-line
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

}  // namespace

json to_json(const RunRecord& r) {
  return {{"kind", "run"},
          {"step", 0},
          {"name", r.name},
          {"moe_layers", r.moe_layers},
          {"n_routed_experts", r.n_routed_experts},
          {"total_steps", r.total_steps},
          {"extra", r.extra}};
}

json to_json(const StepRecord& r) {
  json j = {{"kind", "step"}, {"step", r.step}};
  put(j, "loss", r.loss);
  put(j, "mtp_loss", r.mtp_loss);
  put(j, "lr", r.lr);
  put(j, "tokens_per_s", r.tokens_per_s);
  put(j, "mfu", r.mfu);
  put(j, "grad_norm", r.grad_norm);
  put(j, "time_s", r.time_s);
  if (!r.max_vio.empty()) j["max_vio"] = r.max_vio;
  if (!r.expert_load.empty()) j["expert_load"] = r.expert_load;
  put(j, "mem_bytes", r.mem_bytes);
  put(j, "comm_wait_s", r.comm_wait_s);
  if (r.dist.is_object()) j["dist"] = r.dist;
  return j;
}

json to_json(const EvalRecord& r) {
  json j = {{"kind", "eval"}, {"step", r.step}};
  put(j, "val_loss", r.val_loss);
  put(j, "val_mtp_loss", r.val_mtp_loss);
  put(j, "ppl", r.ppl);
  return j;
}

json to_json(const SampleRecord& r) {
  return {{"kind", "sample"}, {"step", r.step}, {"prompt", r.prompt}, {"text", r.text}};
}

MetricsWriter::MetricsWriter(const std::string& path, int64_t resume_step) : path_(path) {
  fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  if (resume_step >= 0)
    truncate_metrics(path, resume_step);
  else
    io::atomic_write(path, std::string());
  f_ = std::fopen(path.c_str(), "ab");
  DSV3_CHECK(f_ != nullptr, "cannot open {} for appending: {}", path, std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const json& record) {
  DSV3_CHECK(record.is_object() && record.contains("kind") && record.contains("step"),
             "metrics record must be an object with kind and step, got {}", record.dump());
  // Non-finite numbers have no JSON spelling; dump() would write null.
  std::string line = record.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  bool ok = std::fwrite(line.data(), 1, line.size(), f_) == line.size() && std::fflush(f_) == 0;
  DSV3_CHECK(ok, "write to {} failed: {}", path_, std::strerror(errno));
}

void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) {
    io::atomic_write(path, std::string());
    return;
  }
  bool torn = false;
  std::string kept;
  for (const auto& line : split_lines(io::read_file(path), &torn)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    auto it = j.find("step");
    if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() > step) continue;
    kept += line + "\n";
  }
  io::atomic_write(path, kept);
}

MetricsLog read_metrics(const std::string& path) {
  MetricsLog log;
  bool torn = false;
  std::vector<std::string> lines = split_lines(io::read_file(path), &torn);
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, false);
    bool last = i + 1 == lines.size();
    if (j.is_discarded() || !j.is_object() || !j.contains("kind")) {
      if (last) {
        log.torn_tail = true;
        break;
      }
      DSV3_FAIL("{}:{}: not a metrics record: {}", path, i + 1, line.substr(0, 200));
    }
    try {
      std::string kind = j["kind"].get<std::string>();
      int64_t step = j.value("step", int64_t(0));
      if (kind == "run") {
        log.has_run = true;
        log.run.name = j.value("name", "");
        log.run.moe_layers = j.value("moe_layers", std::vector<int>{});
        log.run.n_routed_experts = j.value("n_routed_experts", 0);
        log.run.total_steps = j.value("total_steps", int64_t(0));
        log.run.extra = j.value("extra", json::object());
      } else if (kind == "step") {
        StepRecord r;
        r.step = step;
        r.loss = get(j, "loss");
        r.mtp_loss = get(j, "mtp_loss");
        r.lr = get(j, "lr");
        r.tokens_per_s = get(j, "tokens_per_s");
        r.mfu = get(j, "mfu");
        r.grad_norm = get(j, "grad_norm");
        r.time_s = get(j, "time_s");
        r.max_vio = j.value("max_vio", std::vector<double>{});
        r.expert_load = j.value("expert_load", std::vector<std::vector<double>>{});
        log.steps.push_back(std::move(r));
      } else if (kind == "eval") {
        log.evals.push_back({step, get(j, "val_loss"), get(j, "val_mtp_loss"), get(j, "ppl")});
      } else if (kind == "sample") {
        log.samples.push_back({step, j.value("prompt", ""), j.value("text", "")});
      }
    } catch (const json::exception& e) {
      DSV3_FAIL("{}:{}: malformed {} record: {}", path, i + 1, j.value("kind", "?"), e.what());
    }
  }
  return log;
}

}  // namespace dsv3::train
