"""Batch-1 `Recommender.recommend` in alternating fresh processes (A, B, A, B ...) so both sides
see the same machine load: this checkout's runtime against an earlier commit's on one bundle, or
two bundles under this runtime (e.g. a model over time gaps against the same weights without).

    python -m benchmarks.runtime_ab BUNDLE --before 9abe345 --rounds 4
    python -m benchmarks.runtime_ab BUNDLE --other BUNDLE_B --rounds 4 --out benchmarks/results/time_gaps_ab

The earlier runtime comes from a temporary git worktree of REV (its `runtime/` imported as
`genattn_runtime`); the bundle must be one both runtimes read. A bundle over time gaps gets
event times with its histories (the same seeded gaps on every side). Results:
benchmarks/results/runtime_ab.{json,md} (default --out).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from genattn.fileio import write_json_atomic, write_text_atomic

from .machine import git_commit, machine_info

ROOT = Path(__file__).resolve().parents[1]

# One process: load on CPU with one thread, warm up, then time `calls` batch-1 calls over 200
# histories of 30 random catalog ids (seed 0: the same histories on both sides).
CHILD = r"""
import json, sys, time, numpy as np
from genattn_runtime import Recommender
rec = Recommender.load(sys.argv[1], backend="cpu", threads=1)
ids = list(rec.items.item_ids)
rng = np.random.default_rng(0)
hists = [[ids[i] for i in rng.choice(len(ids), min(30, len(ids)), replace=False)] for _ in range(200)]
# event times (seconds, gaps of 1 s to ~1 day) for a bundle over time gaps; their own stream
gaps = np.random.default_rng(1).integers(1, 86400, (len(hists), len(hists[0])))
kw = [{"times": np.cumsum(g).astype(float).tolist()} if getattr(rec, "time_buckets", 0) else {} for g in gaps]
for h, w in zip(hists[:50], kw):
    rec.recommend(h, k=10, **w)
ts = []
while len(ts) < int(sys.argv[2]):
    for h, w in zip(hists, kw):
        t0 = time.perf_counter(); rec.recommend(h, k=10, **w); ts.append(time.perf_counter() - t0)
print(json.dumps({"p50_ms": float(np.median(ts)) * 1e3, "p90_ms": float(np.percentile(ts, 90)) * 1e3}))
"""


def run_child(bundle: str, calls: int, pythonpath: str | None) -> dict:
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", CHILD, bundle, str(calls)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    side = ap.add_mutually_exclusive_group(required=True)
    side.add_argument("--before", help="git revision whose runtime is compared on BUNDLE")
    side.add_argument("--other", help="a second bundle, both under this checkout's runtime")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results/runtime_ab")
    a = ap.parse_args(argv)
    command = "python -m benchmarks.runtime_ab " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.other is not None:  # two bundles under this runtime, alternating
        rows = {"a": [], "b": []}
        for _ in range(a.rounds):
            rows["a"].append(run_child(a.bundle, a.calls, None))
            rows["b"].append(run_child(a.other, a.calls, None))
        names = {"a": Path(a.bundle).name, "b": Path(a.other).name}
        return _report(a.out, command, rows, f"Batch-1 latency: {names['a']} (A) against {names['b']} (B)",
                       {"bundles": names})
    rows = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree, pkgs = Path(tmp) / "tree", Path(tmp) / "pkgs"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), a.before],
                       check=True, capture_output=True)
        try:
            pkgs.mkdir()
            (pkgs / "genattn_runtime").symlink_to(tree / "runtime")
            for r in range(a.rounds):
                rows["before"].append(run_child(a.bundle, a.calls, str(pkgs)))
                rows["after"].append(run_child(a.bundle, a.calls, None))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return _report(a.out, command, rows, f"Runtime batch-1 latency: this checkout against {a.before}",
                   {"before": a.before, "bundle": Path(a.bundle).name})


def _report(out: str, command: str, rows: dict[str, list], title: str, extra: dict) -> dict:
    """Write <out>.json and <out>.md for the two sides of `rows`, in order; the ratio is after / before,
    or A / B."""
    x, y = rows
    num, den = (y, x) if x == "before" else (x, y)
    show = {"a": "A", "b": "B"}
    X, Y, N, D = (show.get(s, s) for s in (x, y, num, den))
    summary = {side: float(np.median([r["p50_ms"] for r in rs])) for side, rs in rows.items()}
    ratio = summary[num] / summary[den]
    doc = {"command": command, "machine": machine_info(), "commit": git_commit(), **extra, "rounds": rows,
           "median_p50_ms": summary, f"ratio_{num}_{den}": ratio}
    write_json_atomic(Path(out + ".json"), doc)
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Machine: {doc['machine']['cpu']}; commit "
             f"{doc['commit']}; alternating fresh processes, ONNX Runtime CPU, 1 thread, k = 10, 30-id histories", "",
             f"| round | {X} p50 ms | {Y} p50 ms | {X} p90 ms | {Y} p90 ms |", "|---|---|---|---|---|"]
    for i, (p, q) in enumerate(zip(rows[x], rows[y])):
        lines.append(f"| {i} | {p['p50_ms']:.3f} | {q['p50_ms']:.3f} | {p['p90_ms']:.3f} | {q['p90_ms']:.3f} |")
    lines += ["", f"Median p50: {X} {summary[x]:.3f} ms, {Y} {summary[y]:.3f} ms ({N} / {D} {ratio:.3f})."]
    write_text_atomic(Path(out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return doc


if __name__ == "__main__":
    main()
