#!/usr/bin/env python3
"""Distributed training benchmark (issue 14): `mpirun -np N dsv3 train` on this machine for 1, 2
and 4 ranks and several layouts; prints one JSON object.

Per layout: tokens/s of the global batch, the step time, the gradient reduction that the backward
did not hide (exposed wait) and the same layout with the reduction after the backward
(grad_overlap=false: what overlap saves), the blocking expert all-to-all time, the expert dispatch
volume per token (to other ranks, and across nodes) with and without node-limited routing, and
the bytes one rank holds (arenas, optimizer state, activations).

On a 2-core machine the ranks share the cores: this measures the overhead of the distributed
step and the overlap, not a speed-up.

usage: bench_dist.py DSV3_BINARY [--steps N] [--quick]
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time


def run(dsv3, np_, out, steps, extra, tokenizer):
    threads = max(1, 2 // np_)
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), dsv3, "train",
           "--out", out, "--steps", str(steps), "--checkpoint-every", "0", "--quiet",
           "--threads", str(threads)]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    sets = ["batch=8", "seq_len=128", "eval_every=0", "eval_batches=1", "sample_tokens=0",
            "n_routed_experts=16", "num_experts_per_tok=4", "n_group=1", "topk_group=1"] + extra
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    steps_ = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))
              if '"kind":"step"' in l]
    return steps_, wall, cmd


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(steps, skip):
    s = steps[skip:]
    d = [x.get("dist", {}) for x in s]
    disp = [x.get("dispatch") for x in d]
    # Step time from the metrics' wall clock (time_s is cumulative).
    dt = [b["time_s"] - a["time_s"] for a, b in zip(steps[skip - 1:], s)]
    return {
        "tokens_per_s": mean([x["tokens_per_s"] for x in s]),
        "step_s": mean(dt),
        "grad_sync_bytes": d[0].get("grad_sync", {}).get("bytes") if d[0] else None,
        "grad_sync_exposed_s": mean([x.get("grad_sync", {}).get("exposed_wait_s") for x in d]),
        "all_to_all_s": mean([x["all_to_all_s"] for x in disp if x]) if any(disp) else None,
        "dispatch_bytes_per_token": mean([x["bytes_per_token"] for x in disp if x])
        if any(disp) else None,
        "cross_node_bytes_per_token": mean([x["cross_node_bytes_per_token"] for x in disp if x])
        if any(disp) else None,
        "dispatch_rows_to_rank": disp[-1]["rows_to_rank"] if any(disp) else None,
        "mem_bytes_per_rank": max(x["mem_bytes"] for x in s),
        "loss_last": s[-1]["loss"],
    }


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    dsv3 = os.path.abspath(args[0])
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 12
    quick = "--quick" in args
    layouts = [
        # (ranks, name, --set extras)
        (1, "1 rank", []),
        (2, "dp2", ["dp=2", "ep=1"]),
        (2, "dp2 no overlap", ["dp=2", "ep=1", "grad_overlap=false"]),
        (2, "ep2", ["dp=1", "ep=2"]),
        (4, "dp2 x ep2", ["dp=2", "ep=2"]),
        (4, "dp2 x ep2 no overlap", ["dp=2", "ep=2", "grad_overlap=false"]),
        (4, "ep4", ["dp=1", "ep=4", "ranks_per_node=2", "max_nodes=2"]),
        (4, "ep4 node-limited (2 nodes, M=1)", ["dp=1", "ep=4", "ranks_per_node=2",
                                                "max_nodes=1"]),
        (4, "ep4 node-limited (4 nodes, M=2)", ["dp=1", "ep=4", "ranks_per_node=1",
                                                "max_nodes=2"]),
    ]
    if quick:
        layouts = layouts[:2]
    root = tempfile.mkdtemp(prefix="dsv3-bench-dist-")
    results = []
    try:
        tok = None
        for np_, name, extra in layouts:
            out = os.path.join(root, name.replace(" ", "_").replace(",", ""))
            steps_, wall, cmd = run(dsv3, np_, out, steps, extra, tok)
            if tok is None:
                tok = os.path.join(root, "tokenizer")
                shutil.copytree(os.path.join(out, "tokenizer"), tok)
            r = {"ranks": np_, "layout": name, "threads_per_rank": max(1, 2 // np_),
                 "wall_s": wall}
            r.update(summarize(steps_, 2))
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "benchmark": "bench_dist",
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": "built-in small V3 with 16 routed experts, top-4, no group limit",
        "batch": 8, "seq_len": 128, "steps": steps, "steps_skipped": 2,
        "note": "ranks share 2 cores: overhead and overlap, not speed-up",
        "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
