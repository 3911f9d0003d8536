// Subcommand registry of the `dsv3` binary. Each cmd_*.cpp defines
//   static void setup(CLI::App& app) { auto* sub = app.add_subcommand(...); sub->callback(...); }
//   DSV3_COMMAND(setup);
// and needs no other edit anywhere: main() walks the registry.
#pragma once
#include <CLI/CLI.hpp>
#include <vector>

namespace dsv3::cli {

using Setup = void (*)(CLI::App&);
std::vector<Setup>& registry();
inline bool add_command(Setup s) {
  registry().push_back(s);
  return true;
}

}  // namespace dsv3::cli

#define DSV3_COMMAND_CAT2(a, b) a##b
#define DSV3_COMMAND_CAT(a, b) DSV3_COMMAND_CAT2(a, b)
#define DSV3_COMMAND(fn) \
  static const bool DSV3_COMMAND_CAT(dsv3_command_, __LINE__) = ::dsv3::cli::add_command(fn)
