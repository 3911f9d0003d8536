// The `dsv3` binary: git-style subcommands over the library. The only place that exits.
#include <cstdio>
#include <exception>

#include "command.hpp"
#include "core/error.hpp"

namespace dsv3::cli {
std::vector<Setup>& registry() {
  static std::vector<Setup> r;
  return r;
}
}  // namespace dsv3::cli

int main(int argc, char** argv) {
  CLI::App app{"dsv3: DeepSeek-V3 in C++ (model, training, inference)", "dsv3"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dsv3 0.1.0");
  for (auto setup : dsv3::cli::registry()) setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv3::Error& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
