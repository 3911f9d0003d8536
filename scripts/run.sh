#!/usr/bin/env bash
# The main job on a built-in default: sets up, builds, then generates text from a small
# randomly initialised DeepSeek-V3 checkpoint made by `dsv3 init`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BIN=${DSV3_BUILD_DIR:-build}/bin/dsv3
MODEL=data/models/tiny-v3-random
if [ ! -f "$MODEL/config.json" ]; then
  "$BIN" init --config tests/data/tiny-v3/config.json --out "$MODEL" --seed 0 --dtype bf16
fi
"$BIN" generate --model "$MODEL" --prompt-ids 0,17,42 -n 32 --no-stop "$@"
