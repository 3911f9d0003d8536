// `dsv3 tokenize`: encode texts with a tokenizer.json. JSON mode: --input (a JSON array of
// strings) to --output (a JSON array of id arrays), or --decode for the reverse. Plain mode: one
// text from the command line or stdin, printed as ids and pieces. --chat renders a conversation
// (a JSON array of messages) with the DeepSeek-V3 chat template first.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "command.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "io/file.hpp"
#include "options.hpp"
#include "tokenizer/tokenizer.hpp"

namespace {

struct TokenizeArgs {
  std::string tokenizer, input, output, text, chat;
  bool add_special = false, decode = false, skip_special = false, generation_prompt = false;
  int threads = 0;
};

std::string json_quote(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void write_output(const std::string& path, const std::string& text) {
  if (path.empty() || path == "-")
    std::fwrite(text.data(), 1, text.size(), stdout);
  else
    dsv3::io::atomic_write(path, text);
}

// The ids of one array of a --decode input: each a JSON integer that names a token of the
// tokenizer (1.5, 2^32, -1 and ids past the vocabulary are errors, not wrapped or dropped).
std::vector<int32_t> checked_ids(const nlohmann::json& arr, const dsv3::tok::Tokenizer& tok,
                                 const std::string& where, size_t i) {
  std::vector<int32_t> ids;
  for (size_t k = 0; k < arr.size(); ++k) {
    const nlohmann::json& v = arr[k];
    const bool in_range = v.is_number_integer() && !v.is_number_unsigned()
                              ? v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX
                              : v.is_number_unsigned() && v.get<uint64_t>() <= INT32_MAX;
    DSV3_CHECK(in_range && tok.id_to_token(v.get<int32_t>()),
               "{}: element {} item {}: {} is not a token id of this tokenizer", where, i, k,
               v.dump());
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

void run_json(const TokenizeArgs& a, const dsv3::tok::Tokenizer& tok) {
  nlohmann::json in;
  try {
    in = nlohmann::json::parse(a.input == "-"
                                   ? std::string(std::istreambuf_iterator<char>(std::cin), {})
                                   : dsv3::io::read_file(a.input));
  } catch (const nlohmann::json::exception& e) {
    DSV3_FAIL("{}: not valid JSON: {}", a.input, e.what());
  }
  DSV3_CHECK(in.is_array(), "{}: expected a JSON array, got {}", a.input, in.type_name());
  std::string out = "[";
  if (a.decode) {
    for (size_t i = 0; i < in.size(); ++i) {
      DSV3_CHECK(in[i].is_array(), "{}: element {} is not an array of ids", a.input, i);
      auto ids = checked_ids(in[i], tok, a.input, i);
      out += (i ? ",\n" : "") + json_quote(tok.decode(ids, a.skip_special));
    }
  } else {
    std::vector<std::string> texts;
    for (size_t i = 0; i < in.size(); ++i) {
      DSV3_CHECK(in[i].is_string(), "{}: element {} is not a string", a.input, i);
      texts.push_back(in[i].get<std::string>());
    }
    auto ids = tok.encode_batch(texts, a.add_special);
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? ",\n" : "") + nlohmann::json(ids[i]).dump();
  }
  write_output(a.output, out + "]\n");
}

void run_plain(const TokenizeArgs& a, const dsv3::tok::Tokenizer& tok) {
  DSV3_CHECK(!a.decode, "--decode needs --input (a JSON array of id arrays)");
  std::string text = a.text, out;
  if (!a.chat.empty()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(dsv3::io::read_file(a.chat));
    } catch (const nlohmann::json::exception& e) {
      DSV3_FAIL("--chat {}: not valid JSON: {}", a.chat, e.what());
    }
    auto messages = dsv3::tok::chat_messages_from_json(j);
    text = tok.apply_chat_template(messages, a.generation_prompt);
    out += fmt::format("text: {}\n", json_quote(text));
  } else if (text.empty()) {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  }
  auto ids = tok.encode(text, a.add_special);
  out += fmt::format("ids: {}\n", nlohmann::json(ids).dump());
  out += fmt::format("{} tokens, {} bytes\n", ids.size(), text.size());
  for (int32_t id : ids) {
    std::string piece = tok.decode(std::vector<int32_t>{id});
    out += fmt::format("{:>8}  {:<24} {}\n", id, json_quote(tok.id_to_token(id).value_or("")),
                       json_quote(piece));
  }
  write_output(a.output, out);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* sub = app.add_subcommand("tokenize", "Encode (or decode) text with a tokenizer.json");
  sub->add_option("--tokenizer", args->tokenizer,
                  "directory with tokenizer.json (and tokenizer_config.json), or the file")
      ->required();
  sub->add_option("--input", args->input,
                  "JSON array of strings to encode ('-' for stdin); with --decode, of id arrays");
  sub->add_option("--output", args->output, "where the result goes (default: stdout)");
  sub->add_option("text", args->text, "plain mode: the text (default: read stdin)");
  sub->add_flag("--add-special-tokens", args->add_special,
                "add the BOS/EOS the tokenizer's post-processor or config asks for");
  sub->add_flag("--decode", args->decode, "JSON mode: decode id arrays into strings");
  sub->add_flag("--skip-special-tokens", args->skip_special, "with --decode: drop special tokens");
  sub->add_option("--chat", args->chat,
                  "plain mode: render this JSON array of chat messages with the chat template");
  sub->add_flag("--add-generation-prompt", args->generation_prompt,
                "with --chat: end with the assistant prompt");
  dsv3::cli::add_int_option(sub, "--threads", args->threads, 0, 1 << 20,
                            "worker threads (default: all cores)");
  sub->callback([args] {
    dsv3::set_num_threads(dsv3::cli::cap_threads(args->threads));
    auto tok = dsv3::tok::Tokenizer::load(args->tokenizer);
    if (!args->input.empty())
      run_json(*args, tok);
    else
      run_plain(*args, tok);
  });
}

}  // namespace

DSV3_COMMAND(setup);
