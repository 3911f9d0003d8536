#!/usr/bin/env bash
# The main job on a built-in default: sets up, builds, then `dsv3 train` — with no arguments it
# trains the default small DeepSeek-V3 on the fortunes corpus into runs/default and prints
# samples (arguments are passed on, e.g. `scripts/run.sh --steps 100`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BIN=${DSV3_BUILD_DIR:-build}/bin/dsv3
"$BIN" train "$@"
