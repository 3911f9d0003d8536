// Implementation of train_config.hpp: the field table behind JSON round trip and --set, value
// checks, the default model and the FLOPs count used for MFU.
#include "train/train_config.hpp"

#include <cmath>
#include <set>

#include "core/error.hpp"
#include "core/memory.hpp"
#include "model/footprint.hpp"

namespace dsv3::train {
namespace {

// Calls f(key, member) for every TrainConfig field except `model`. One table, so JSON, --set and
// the docs cannot drift apart.
template <typename C, typename F>
void visit_fields(C& c, F&& f) {
  f("data", c.data);
  f("tokenizer", c.tokenizer);
  f("vocab_size", c.vocab_size);
  f("doc_split", c.doc_split);
  f("val_fraction", c.val_fraction);
  f("steps", c.steps);
  f("batch", c.batch);
  f("seq_len", c.seq_len);
  f("seed", c.seed);
  f("threads", c.threads);
  f("lr", c.lr);
  f("warmup", c.warmup);
  f("warmup_frac", c.warmup_frac);
  f("lr_schedule", c.lr_schedule);
  f("weight_decay", c.weight_decay);
  f("grad_clip", c.grad_clip);
  f("moments", c.moments);
  f("balance", c.balance);
  f("gamma", c.gamma);
  f("alpha", c.alpha);
  f("mtp", c.mtp);
  f("mtp_lambda", c.mtp_lambda);
  f("mtp_lambda_late", c.mtp_lambda_late);
  f("recompute", c.recompute);
  f("precision", c.precision);
  f("checkpoint_every", c.checkpoint_every);
  f("keep_last", c.keep_last);
  f("eval_every", c.eval_every);
  f("eval_batches", c.eval_batches);
  f("sample_every", c.sample_every);
  f("sample_prompts", c.sample_prompts);
  f("sample_tokens", c.sample_tokens);
  f("sample_temperature", c.sample_temperature);
  f("sample_top_k", c.sample_top_k);
  f("export_dtype", c.export_dtype);
  f("progress_every", c.progress_every);
  f("dp", c.dp);
  f("ep", c.ep);
  f("ranks_per_node", c.ranks_per_node);
  f("max_nodes", c.max_nodes);
  f("grad_overlap", c.grad_overlap);
  f("grad_bucket_mb", c.grad_bucket_mb);
}

// Assigns a JSON value to a field, naming the key and source on a type mismatch.
template <typename T>
void assign(T& dst, const nlohmann::json& v, const std::string& key, const std::string& where) {
  try {
    if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      if (v.is_string()) {
        dst = {v.get<std::string>()};
        return;
      }
    }
    if constexpr (std::is_same_v<T, uint64_t> || std::is_same_v<T, int64_t> ||
                  std::is_same_v<T, int>) {
      DSV3_CHECK(v.is_number_integer() || v.is_number_unsigned(), "{}: '{}' must be an integer",
                 where, key);
      if constexpr (std::is_same_v<T, uint64_t>)
        DSV3_CHECK(v.is_number_unsigned(), "{}: '{}' must be a non-negative integer", where, key);
    }
    if constexpr (std::is_same_v<T, bool>)
      DSV3_CHECK(v.is_boolean(), "{}: '{}' must be true or false", where, key);
    dst = v.get<T>();
  } catch (const nlohmann::json::exception& e) {
    DSV3_FAIL("{}: '{}' has the wrong type ({}): {}", where, key, v.dump(), e.what());
  }
}

bool has_field(const std::string& key) {
  TrainConfig c;
  bool found = key == "model";
  visit_fields(c, [&](const char* k, auto&) { found = found || key == k; });
  return found;
}

std::set<std::string> model_keys() {
  std::set<std::string> keys;
  const nlohmann::json defaults = default_model_json();  // items() must not outlive it
  for (auto& [k, v] : defaults.items()) keys.insert(k);
  // Keys the HF config.json may carry that the default leaves out.
  for (const char* k : {"rope_scaling", "aux_loss_alpha", "seq_aux", "quantization_config",
                        "architectures", "num_key_value_heads", "hidden_act", "attention_bias",
                        "attention_dropout", "pretraining_tp", "use_cache", "ep_size"})
    keys.insert(k);
  return keys;
}

}  // namespace

nlohmann::json default_model_json() {
  return {
      {"architectures", {"DeepseekV3ForCausalLM"}},
      {"model_type", "deepseek_v3"},
      {"vocab_size", 0},
      {"hidden_size", 192},
      {"intermediate_size", 512},
      {"moe_intermediate_size", 96},
      {"num_hidden_layers", 3},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 4},
      {"q_lora_rank", 96},
      {"kv_lora_rank", 64},
      {"qk_nope_head_dim", 32},
      {"qk_rope_head_dim", 16},
      {"v_head_dim", 32},
      {"n_routed_experts", 8},
      {"n_shared_experts", 1},
      {"num_experts_per_tok", 2},
      {"n_group", 4},
      {"topk_group", 2},
      {"topk_method", "noaux_tc"},
      {"scoring_func", "sigmoid"},
      {"norm_topk_prob", true},
      {"routed_scaling_factor", 2.5},
      {"first_k_dense_replace", 1},
      {"moe_layer_freq", 1},
      {"rope_theta", 10000},
      {"rms_norm_eps", 1e-6},
      {"max_position_embeddings", 512},
      {"num_nextn_predict_layers", 1},
      {"tie_word_embeddings", false},
      {"bos_token_id", 0},
      {"eos_token_id", 1},
      {"initializer_range", 0.02},
      {"hidden_act", "silu"},
      {"torch_dtype", "bfloat16"},
  };
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  visit_fields(*this, [&](const char* k, const auto& v) { j[k] = v; });
  j["model"] = model.is_null() ? nlohmann::json::object() : model;
  return j;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j, const std::string& where) {
  DSV3_CHECK(j.is_object(), "{}: expected a JSON object of training options", where);
  TrainConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    // Not a structured binding: clang 14 (the sanitizer build) cannot capture one in a lambda.
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "model") {
      DSV3_CHECK(v.is_object(), "{}: 'model' must be an object of config.json keys", where);
      c.model = v;
      continue;
    }
    bool found = false;
    visit_fields(c, [&](const char* k, auto& field) {
      if (key != k) return;
      assign(field, v, key, where);
      found = true;
    });
    DSV3_CHECK(found, "{}: unknown training option '{}' (docs/training.md lists them)", where, key);
  }
  return c;
}

void TrainConfig::set(const std::string& key_value) {
  const size_t eq = key_value.find('=');
  DSV3_CHECK(eq != std::string::npos && eq > 0, "--set '{}': expected key=value", key_value);
  const std::string key = key_value.substr(0, eq), text = key_value.substr(eq + 1);
  nlohmann::json v = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded()) v = text;
  const std::string where = "--set " + key_value;
  if (has_field(key) && key != "model") {
    bool string_field = false;
    visit_fields(*this, [&](const char* k, auto& field) {
      using T = std::decay_t<decltype(field)>;
      if (key == k)
        string_field =
            std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<std::string>>;
    });
    if (string_field && !v.is_string() && !v.is_array()) v = text;
    if (key == "data" && v.is_string()) {  // data=a,b,c
      nlohmann::json arr = nlohmann::json::array();
      size_t start = 0;
      while (start <= text.size()) {
        size_t comma = text.find(',', start);
        if (comma == std::string::npos) comma = text.size();
        if (comma > start) arr.push_back(text.substr(start, comma - start));
        start = comma + 1;
      }
      v = arr;
    }
    visit_fields(*this, [&](const char* k, auto& field) {
      if (key == k) assign(field, v, key, where);
    });
    return;
  }
  static const std::set<std::string> keys = model_keys();
  DSV3_CHECK(keys.count(key),
             "{}: '{}' is neither a training option nor a model config.json key "
             "(docs/training.md lists them)",
             where, key);
  if (!model.is_object()) model = nlohmann::json::object();
  model[key] = v;
}

void TrainConfig::validate() const {
  const char* w = "training options";
  DSV3_CHECK(!data.empty(), "{}: 'data' names no input files", w);
  DSV3_CHECK(vocab_size >= 300 && vocab_size <= (1 << 20),
             "{}: 'vocab_size' {} must be in [300, 2^20] (256 bytes + special tokens)", w,
             vocab_size);
  DSV3_CHECK(val_fraction > 0 && val_fraction < 0.5, "{}: 'val_fraction' {} must be in (0, 0.5)", w,
             val_fraction);
  DSV3_CHECK(steps >= 1, "{}: 'steps' must be >= 1, got {}", w, steps);
  DSV3_CHECK(batch >= 1, "{}: 'batch' must be >= 1, got {}", w, batch);
  DSV3_CHECK(seq_len >= 4, "{}: 'seq_len' must be >= 4, got {}", w, seq_len);
  DSV3_CHECK(threads >= 0, "{}: 'threads' must be >= 0, got {}", w, threads);
  DSV3_CHECK(lr > 0 && std::isfinite(lr), "{}: 'lr' must be positive, got {}", w, lr);
  DSV3_CHECK(warmup < steps, "{}: 'warmup' {} must be below 'steps' {}", w, warmup, steps);
  DSV3_CHECK(warmup_frac >= 0 && warmup_frac < 1, "{}: 'warmup_frac' must be in [0, 1)", w);
  DSV3_CHECK(lr_schedule == "deepseek-v3" || lr_schedule == "cosine" || lr_schedule == "constant",
             "{}: 'lr_schedule' must be deepseek-v3, cosine or constant, got '{}'", w, lr_schedule);
  DSV3_CHECK(weight_decay >= 0, "{}: 'weight_decay' must be >= 0", w);
  DSV3_CHECK(grad_clip > 0, "{}: 'grad_clip' must be positive", w);
  DSV3_CHECK(grad_bucket_mb >= 0 && grad_bucket_mb <= 1 << 20,
             "{}: 'grad_bucket_mb' must be in [0, 2^20] MiB, got {}", w, grad_bucket_mb);
  DSV3_CHECK(moments == "bf16" || moments == "f32", "{}: 'moments' must be bf16 or f32, got '{}'",
             w, moments);
  DSV3_CHECK(precision == "fp32" || precision == "bf16" || precision == "fp8",
             "{}: 'precision' must be fp32, bf16 or fp8, got '{}'", w, precision);
  DSV3_CHECK(gamma >= 0 && alpha >= 0, "{}: 'gamma' and 'alpha' must be >= 0", w);
  DSV3_CHECK(mtp_lambda >= 0 && mtp_lambda_late >= 0, "{}: 'mtp_lambda*' must be >= 0", w);
  DSV3_CHECK(checkpoint_every >= 0 && eval_every >= 0, "{}: intervals must be >= 0", w);
  DSV3_CHECK(keep_last >= 1, "{}: 'keep_last' must be >= 1, got {}", w, keep_last);
  DSV3_CHECK(eval_batches >= 1, "{}: 'eval_batches' must be >= 1", w);
  DSV3_CHECK(sample_tokens >= 0 && sample_top_k >= 0 && sample_temperature >= 0,
             "{}: sample options must be >= 0", w);
  DSV3_CHECK(progress_every >= 1, "{}: 'progress_every' must be >= 1", w);
  parse_export_dtype(export_dtype);
  DSV3_CHECK(doc_split == "auto" || doc_split == "fortune" || doc_split == "paragraph" ||
                 doc_split == "file",
             "{}: 'doc_split' must be auto, fortune, paragraph or file, got '{}'", w, doc_split);
  const model::ModelConfig c = model_config(vocab_size);
  DSV3_CHECK(seq_len + 1 <= c.max_position_embeddings,
             "{}: 'seq_len' {} exceeds the model's max_position_embeddings {}", w, seq_len,
             c.max_position_embeddings);
  check_fits_in_memory(model::train_memory_bytes(c, batch, seq_len, moments == "f32" ? 4 : 2),
                       fmt::format("{}: training with batch {} and seq_len {} ({:.3g} parameters)",
                                   w, batch, seq_len, model::param_count(c)));
  DSV3_CHECK(!mtp || c.num_nextn_predict_layers >= 1,
             "{}: 'mtp' is on but the model has num_nextn_predict_layers = 0 (set mtp=false)", w);
  DSV3_CHECK(dp >= 0 && ep >= 1 && ranks_per_node >= 0 && max_nodes >= 1,
             "{}: 'dp' must be >= 0, 'ep' >= 1, 'ranks_per_node' >= 0, 'max_nodes' >= 1", w);
  DSV3_CHECK(
      ep == 1 || (c.n_routed_experts > 0 && c.n_routed_experts % ep == 0),
      "{}: expert parallelism over ep = {} ranks needs the {} routed experts to split evenly "
      "(n_routed_experts divisible by ep)",
      w, ep, c.n_routed_experts);
}

void TrainConfig::validate_layout(int world) const {
  const int64_t d = dp > 0 ? dp : world / ep;
  DSV3_CHECK(d * ep == world,
             "layout: dp {} x ep {} = {} ranks, but the job has {} (mpirun -np {}): give --dp and "
             "--ep whose product is the number of ranks",
             dp > 0 ? std::to_string(dp) : "(world/ep)", ep, d * ep, world, world);
  DSV3_CHECK(batch % world == 0,
             "layout: the global batch {} does not split over {} ranks (dp {} x ep {}): every rank "
             "takes batch / (dp x ep) sequences; choose a batch divisible by {}",
             batch, world, d, ep, world);
  if (ranks_per_node > 0)
    DSV3_CHECK(ep % ranks_per_node == 0,
               "layout: {} expert-parallel ranks do not form whole nodes of ranks_per_node = {}",
               ep, ranks_per_node);
  const model::ModelConfig c = model_config(vocab_size);
  if (ep > 1 && ranks_per_node > 0 && ep / ranks_per_node > max_nodes) {
    const int64_t nodes = ep / ranks_per_node;
    DSV3_CHECK(c.num_experts_per_tok <= max_nodes * (c.n_routed_experts / nodes),
               "layout: {} experts per token do not fit in max_nodes = {} nodes of {} experts",
               c.num_experts_per_tok, max_nodes, c.n_routed_experts / nodes);
  }
}

model::ModelConfig TrainConfig::model_config(int64_t vocab) const {
  nlohmann::json j = default_model_json();
  if (model.is_object())
    for (auto& [k, v] : model.items()) j[k] = v;
  j["vocab_size"] = vocab;
  return model::parse_config(j.dump(), "model config (built-in default + --config/--set)");
}

LrScheduleConfig TrainConfig::lr_config() const {
  LrScheduleConfig l;
  l.kind = lr_schedule == "cosine"     ? LrKind::Cosine
           : lr_schedule == "constant" ? LrKind::Constant
                                       : LrKind::DeepSeekV3;
  l.max_lr = lr;
  l.warmup_steps = warmup;
  l.warmup_frac = warmup_frac;
  return l;
}

AdamWConfig TrainConfig::adamw_config() const {
  AdamWConfig a;
  a.weight_decay = float(weight_decay);
  a.moments = moments == "f32" ? MomentType::F32 : MomentType::BF16;
  return a;
}

DType TrainConfig::export_type() const {
  return parse_export_dtype(export_dtype);
}

DType parse_export_dtype(const std::string& s) {
  if (s == "bf16") return DType::BF16;
  if (s == "f32") return DType::F32;
  if (s == "fp8") return DType::F8_E4M3;
  DSV3_FAIL("export dtype must be bf16, f32 or fp8, got '{}'", s);
}

double train_flops_per_token(const model::ModelConfig& c, int64_t seq_len, bool mtp) {
  const double D = double(c.hidden_size), H = double(c.num_attention_heads);
  const double qk = double(c.qk_head_dim()), v = double(c.v_head_dim);
  const double R = double(c.kv_lora_rank), Dr = double(c.qk_rope_head_dim);
  const double Dn = double(c.qk_nope_head_dim);
  double attn =
      c.q_lora_rank ? D * double(*c.q_lora_rank) + double(*c.q_lora_rank) * H * qk : D * H * qk;
  attn += D * (R + Dr) + R * H * (Dn + v) + H * v * D;
  const double dense = 3 * D * double(c.intermediate_size);
  const double moe =
      D * double(c.n_routed_experts) +
      3 * D * double(c.moe_intermediate_size) * double(c.n_shared_experts + c.num_experts_per_tok);
  const double attn_ctx = H * (double(seq_len) + 1) / 2 * (qk + v);  // MACs per token
  double macs = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    macs += attn + attn_ctx + (c.is_moe_layer(i) ? moe : dense);
  macs += D * double(c.vocab_size);  // head
  if (mtp)
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k)
      macs += 2 * D * D + attn + attn_ctx + moe + D * double(c.vocab_size);
  return 3 * 2 * macs;
}

}  // namespace dsv3::train
