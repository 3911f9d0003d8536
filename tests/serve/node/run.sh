#!/usr/bin/env bash
# Runs one node test of `dsv3 serve` (ctest: Serve.Node.*); exits 77 (skipped) without node or the
# npm packages, which scripts/setup.sh installs (npm ci in this folder).
cd "$(dirname "$0")"
command -v node >/dev/null 2>&1 || { echo "SKIP: node is not installed"; exit 77; }
[ -d node_modules ] || { echo "SKIP: no node_modules: run scripts/setup.sh"; exit 77; }
exec node "$@"
