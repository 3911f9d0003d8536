#!/bin/bash
# The mixed-precision ablation of docs/training-runs.md ("Precision ablation"): the default
# `dsv3 train` run in FP32, BF16 and FP8 (same seed, data order and initialization), then one
# report of the FP8 run beside BF16 and FP32 (OUT_DIR/fp8/report.html: the three loss curves
# overlaid, FP8's final losses relative to each), and BF16's beside FP32.
#   scripts/precision_ablation.sh [OUT_DIR] [extra dsv3 train args, e.g. --steps 500 --threads 1]
set -euo pipefail
out=${1:-runs/precision}
shift || true
dsv3=${DSV3:-build/bin/dsv3}
for p in fp32 bf16 fp8; do
  "$dsv3" train --precision "$p" --out "$out/$p" --name "$p" --quiet "$@"
done
"$dsv3" report "$out/fp8" --compare "$out/bf16" --compare "$out/fp32"
"$dsv3" report "$out/bf16" --compare "$out/fp32"
