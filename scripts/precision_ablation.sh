#!/bin/bash
# The mixed-precision ablation of docs/training-runs.md ("Precision ablation"): the default
# `dsv3 train` run in FP32, BF16 and FP8 (same seed, data order and initialization), then the
# reports comparing FP8 with BF16 and BF16 with FP32 (loss curves overlaid in each loss.svg).
#   scripts/precision_ablation.sh [OUT_DIR] [extra dsv3 train args, e.g. --steps 500 --threads 1]
set -euo pipefail
out=${1:-runs/precision}
shift || true
dsv3=${DSV3:-build/bin/dsv3}
for p in fp32 bf16 fp8; do
  "$dsv3" train --precision "$p" --out "$out/$p" --name "$p" --quiet "$@"
done
"$dsv3" report "$out/fp8" --compare "$out/bf16"
"$dsv3" report "$out/bf16" --compare "$out/fp32"
