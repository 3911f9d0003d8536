#!/bin/bash
# `mpirun -np 2 dsv3 train --ep 2` and its faults, through the CLI (ctest Dist.Train.Faults):
#  1. a bad layout (dp x ep != ranks) is refused before any work, reported once (rank 0);
#  2. an uninterrupted 40-step run (checkpoints every 8 steps) gives the reference losses;
#  3. the same run with rank 1 killed (kill -9) once past step 10 ends the whole job, non-zero,
#     in bounded time; `--resume` continues from its last checkpoint and repeats the reference
#     losses bit for bit;
#  4. a rank that hangs (SIGSTOP) ends the job through DSV3_COMM_TIMEOUT_S with dsv3's message.
# Usage: train_faults.sh DSV3_BINARY MPIEXEC
set -u
dsv3=$1
mpirun=$2
run=("$mpirun" --oversubscribe --bind-to none -np 2)
dir=$(mktemp -d /tmp/dsv3-dist-faults-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

# A small English-like corpus (the grammar of tests/train/test_trainer_util.hpp).
mkdir -p "$dir/corpus"
subj=("the cat" "a dog" "the old man" "my friend" "the bird" "a child" "the farmer")
verb=(sees likes finds eats wants keeps takes)
obj=("the red apple" "a small house" "the green field" "some bread" "the long road")
RANDOM=7
for p in $(seq 300); do
  echo "${subj[RANDOM % 7]} ${verb[RANDOM % 7]} ${obj[RANDOM % 5]} today. ${subj[RANDOM % 7]} ${verb[RANDOM % 7]} ${obj[RANDOM % 5]}."
  echo
done >"$dir/corpus/a.txt"
cat >"$dir/model.json" <<'EOF'
{"hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 32, "kv_lora_rank": 32,
 "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "max_position_embeddings": 64}
EOF
common=(--config "$dir/model.json" --data "$dir/corpus" --steps 40 --checkpoint-every 8 --quiet
  --threads 1)
for kv in vocab_size=400 batch=4 seq_len=32 eval_every=0 eval_batches=1 sample_tokens=4 \
  'sample_prompts=["The cat"]' moments=f32; do
  common+=(--set "$kv")
done
losses() { grep '"kind":"step"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,}]*\).*/\1/'; }

# 1. Refused before work: exit non-zero, one message, no run dir written.
out=$("${run[@]}" "$dsv3" train "${common[@]}" --dp 2 --ep 2 --out "$dir/bad" 2>&1) &&
  fail "a 2x2 layout on 2 ranks was accepted"
[ "$(echo "$out" | grep -c 'dsv3: error: layout')" = 1 ] || fail "refusal not reported once: $out"
[ -e "$dir/bad/run.json" ] && fail "the refused run wrote $dir/bad"
echo "refused: $(echo "$out" | grep 'dsv3: error')"

# 2. The reference.
"${run[@]}" "$dsv3" train "${common[@]}" --ep 2 --out "$dir/a" || fail "the reference run failed"
[ "$(losses "$dir/a" | wc -l)" = 40 ] || fail "the reference has not 40 steps"

# Starts run B in the background; waits until its metrics are past step 10 (metrics records
# have their keys sorted: "kind" comes before "step").
past10='"kind":"step".*"step":(1[1-9]|[2-9][0-9])[,}]'
start_b() {
  rm -rf "$dir/b"
  DSV3_COMM_TIMEOUT_S=${1:-600} "${run[@]}" "$dsv3" train "${common[@]}" --ep 2 \
    --tokenizer "$dir/a/tokenizer" --out "$dir/b" >"$dir/b.log" 2>&1 &
  bpid=$!
  for _ in $(seq 600); do
    grep -Eq "$past10" "$dir/b/metrics.jsonl" 2>/dev/null && break
    kill -0 $bpid 2>/dev/null || break
    sleep 0.1
  done
  grep -Eq "$past10" "$dir/b/metrics.jsonl" || fail "run B did not get past step 10"
  # The ranks: the dsv3 processes mpirun started, in rank order of their pids.
  ranks=($(pgrep -P $bpid -f "dsv3 train" | sort -n))
  [ ${#ranks[@]} = 2 ] || fail "expected 2 rank processes, found ${ranks[*]}"
}
# Waits up to $1 s for run B to end; its status must be non-zero.
end_b() {
  local t0=$SECONDS
  while kill -0 $bpid 2>/dev/null; do
    [ $((SECONDS - t0)) -le "$1" ] || {
      kill -9 $bpid
      fail "the job did not end within $1 s"
    }
    sleep 0.2
  done
  wait $bpid && fail "the job ended with status 0"
  echo "ended after $((SECONDS - t0)) s: $(grep -E 'dsv3|exited|signal' "$dir/b.log" | head -2)"
}

# 3. kill -9 of rank 1, then resume.
start_b
kill -9 "${ranks[1]}"
end_b 60
"${run[@]}" "$dsv3" train --resume "$dir/b" --quiet || fail "the resume failed"
[ "$(losses "$dir/a")" = "$(losses "$dir/b")" ] || {
  paste <(losses "$dir/a") <(losses "$dir/b")
  fail "the resumed run's losses differ from the uninterrupted run's"
}
echo "resumed after kill -9: 40 losses equal to the uninterrupted run"

# 4. A hung rank (stopped) ends the job through the communicator's timeout.
start_b 5
kill -STOP "${ranks[1]}"
end_b 60
kill -CONT "${ranks[1]}" 2>/dev/null
grep -q "did not complete within 5 s" "$dir/b.log" || fail "no timeout message: $(cat "$dir/b.log")"
echo "PASS"
