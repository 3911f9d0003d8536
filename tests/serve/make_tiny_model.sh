#!/usr/bin/env bash
# The model the serving tests run: a randomly initialised tiny DeepSeek-V3 (with its MTP module)
# over the real DeepSeek-V3 tokenizer, so that chat templates and text round-trip. Its vocabulary
# is the tokenizer's; the rest is small (hidden 64, 3 layers, 16 experts), so a step takes
# milliseconds. Usage: make_tiny_model.sh DSV3_BIN SOURCE_DIR OUT_DIR. Exits 77 (skip) without
# the tokenizer (scripts/setup.sh fetches it).
set -euo pipefail
bin=$1 src=$2 out=$3
tok=$src/data/tokenizers/deepseek-v3
[ -f "$tok/tokenizer.json" ] || { echo "no $tok/tokenizer.json: run scripts/setup.sh"; exit 77; }
rm -rf "$out"
"$bin" init --config "$src/tests/serve/tiny_serve_config.json" --out "$out" --seed 16 --dtype bf16
cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$out/"
