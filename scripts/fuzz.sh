#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan + UBSan, in build-fuzz) and runs each on a
# corpus seeded from fuzz/seeds (taken from tests/data) for a bounded time. A crash, sanitizer
# report, leak, timeout or out-of-memory of any target fails the script; the reproducer is left
# in build-fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh                     every target for 30 s
#   scripts/fuzz.sh 20 fuzz_config      one target for 20 s
#   DSV3_FUZZ_RUNS=1000000 scripts/fuzz.sh 0   every target for 10^6 inputs (docs/reliability.md)
#   DSV3_FUZZ_JOBS=1 scripts/fuzz.sh     one target at a time (default: as many as cores)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-30}
[ $# -gt 0 ] && shift
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(fuzz_safetensors fuzz_config fuzz_tokenizer_json fuzz_tokenizer_encode
           fuzz_chat_template fuzz_checkpoint_manifest fuzz_openai_request)
fi
BUILD=${DSV3_FUZZ_BUILD_DIR:-build-fuzz}

# scripts/test.sh hands over its sanitizer build (DSV3_FUZZ_BUILD_DIR), configured already.
if ! grep -q "^DSV3_FUZZ:BOOL=ON" "$BUILD/CMakeCache.txt" 2>/dev/null; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
    -DDSV3_FUZZ=ON -DDSV3_BUILD_TESTS=OFF -DDSV3_BUILD_BENCH=OFF >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)" --target "${TARGETS[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
limits=(-rss_limit_mb=2048 -timeout="${DSV3_FUZZ_TIMEOUT:-20}" -max_len=65536 -print_final_stats=1)
if [ -n "${DSV3_FUZZ_RUNS:-}" ]; then
  limits+=(-runs="$DSV3_FUZZ_RUNS")
else
  limits+=(-max_total_time="$SECONDS_PER_TARGET")
fi

# Targets run DSV3_FUZZ_JOBS at a time (default: one per core); each is one process on one core
# for its whole time, so running them side by side gives each the same number of inputs as
# running them one after another, in a fraction of the wall time (CI has 2 cores).
JOBS=${DSV3_FUZZ_JOBS:-$(nproc)}
run_one() {  # fuzzes one target; its report goes to $BUILD/$t.log, its exit status is its verdict
  local t=$1 seeds=fuzz/seeds/${1#fuzz_} corpus=$BUILD/corpus/$1 artifacts=$BUILD/artifacts/$1
  local scratch=$BUILD/scratch/$1  # memory-backed when possible: some targets write a file per input
  [ -d /dev/shm ] && scratch=/dev/shm/dsv3-fuzz-$t-$$
  mkdir -p "$corpus" "$artifacts" "$scratch"
  local rc=0
  DSV3_FUZZ_SCRATCH=$scratch "$BUILD/fuzz/$t" "${limits[@]}" -artifact_prefix="$artifacts/" \
    "$corpus" "$seeds" >"$BUILD/$t.log" 2>&1 || rc=$?
  rm -rf "$scratch"
  return $rc
}
declare -A pid_of
for t in "${TARGETS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "fuzz: $t (${DSV3_FUZZ_RUNS:-${SECONDS_PER_TARGET} s})"
  run_one "$t" &
  pid_of[$t]=$!
done

status=0
for t in "${TARGETS[@]}"; do
  log=$BUILD/$t.log
  if wait "${pid_of[$t]}"; then
    echo "fuzz: $t passed"
    grep -E "^stat::number_of_executed_units|^Done [0-9]+ runs" "$log" | tail -n 2 | sed 's/^/  /'
  else
    echo "fuzz: $t FAILED (log: $log, reproducer in $BUILD/artifacts/$t/)"
    tail -n 40 "$log"
    status=1
  fi
done
exit $status
