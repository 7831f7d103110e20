"""Cost of each attention variant against softmax: FLOPs and CPU time, torch eager.

    python -m benchmarks.cost [--quick]

FLOPs are counted by torch.utils.flop_counter (matrix products only: the pair MLPs'
hidden layers are counted, element-wise activations are not). Times are medians over
repeated calls on this machine; the ratios to softmax come from the same run.
"""
from __future__ import annotations

import argparse
import sys
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from genattn.config import load_run_config
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.models import SASRec, Sampling

from .accuracy import EARLIER_DEFAULTS
from .machine import machine_info

VARIANTS = [  # (name, kind, overrides, serving sampling)
    ("softmax", "softmax", {}, None),
    ("vae (last block, mean)", "vae", {}, Sampling(mode="mean")),
    ("vae (all blocks, mean)", "vae", {"generative_blocks": "all"}, Sampling(mode="mean")),
    ("diffusion (last block, 8 steps)", "diffusion", {}, Sampling(n_steps=8)),
    ("diffusion (all blocks, 8 steps)", "diffusion", {"generative_blocks": "all"}, Sampling(n_steps=8)),
    ("diffusion (last block, 2 steps)", "diffusion", {}, Sampling(n_steps=2)),
]


def build(kind: str, overrides: dict, n_items: int) -> SASRec:
    # One shared backbone for every variant (the kinds' earlier defaults: 64 wide, 2 blocks), so the
    # table compares attention, not the per-kind defaults' different depths.
    run = load_run_config(EARLIER_DEFAULTS / f"{kind}.toml", {"model": {"n_items": n_items, **overrides}})
    torch.manual_seed(0)
    return SASRec(run.model)


def median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-items", type=int, default=1682)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/cost")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    reps_serve, reps_train = (5, 1) if a.quick else (50, 5)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, kind, over, samp in VARIANTS:
        model = build(kind, over, a.n_items)
        L = model.cfg.max_len
        seq1 = torch.randint(1, a.n_items + 1, (1, L), generator=g)
        seq64 = torch.randint(1, a.n_items + 1, (64, L), generator=g)
        train_seq = torch.randint(1, a.n_items + 1, (128, L), generator=g)
        train_tgt = torch.randint(1, a.n_items + 1, (128, L), generator=g)
        model.eval()
        with torch.no_grad():
            serve_flops = flops(lambda: model.scores(seq1, samp))
            t1 = median_time(lambda: model.scores(seq1, samp), reps_serve)
            t64 = median_time(lambda: model.scores(seq64, samp), max(reps_serve // 5, 1))
        model.train()
        rng = torch.Generator().manual_seed(0)

        def step():
            model.zero_grad(set_to_none=True)
            model(train_seq, train_tgt, rng=rng)["loss"].backward()

        train_flops = flops(lambda: model(train_seq, train_tgt, rng=rng)["loss"])
        tt = median_time(step, reps_train)
        rows.append({"variant": name, "kind": kind, "serve_gflops_b1": serve_flops / 1e9,
                     "serve_ms_b1": t1 * 1e3, "serve_ms_b64": t64 * 1e3,
                     "train_fwd_gflops_b128": train_flops / 1e9, "train_step_s_b128": tt})
    base = rows[0]
    for r in rows:
        r["serve_ms_b1_ratio"] = r["serve_ms_b1"] / base["serve_ms_b1"]
        r["serve_ms_b64_ratio"] = r["serve_ms_b64"] / base["serve_ms_b64"]
        r["train_step_ratio"] = r["train_step_s_b128"] / base["train_step_s_b128"]
        r["serve_flops_ratio"] = r["serve_gflops_b1"] / base["serve_gflops_b1"]
    result = {"command": "python -m benchmarks.cost " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(),
              "threads": a.threads, "n_items": a.n_items, "quick": a.quick, "rows": rows}
    write_json_atomic(a.out + ".json", result)
    lines = ["# Cost of each attention variant (torch eager, CPU)", "",
             f"Machine: {result['machine']['cpu']}, {a.threads} threads; catalog {a.n_items} items, max_len 50, "
             "d_model 64, 2 blocks, pair_hidden 8 (one shared backbone: benchmarks/configs/earlier_defaults/).", "",
             f"Reproduce: `{result['command']}`. FLOPs: matrix products only (torch.utils.flop_counter). "
             "Serving = `SASRec.scores` (newest row in the last block); training = one forward+backward "
             "of a batch of 128 windows.", "",
             "| variant | serve GFLOP (b=1) | serve ms b=1 (× softmax) | serve ms b=64 (× softmax) "
             "| train fwd GFLOP (b=128) | train step s (× softmax) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['serve_gflops_b1']:.4f} | {r['serve_ms_b1']:.2f} "
                     f"({r['serve_ms_b1_ratio']:.2f}×) | {r['serve_ms_b64']:.1f} ({r['serve_ms_b64_ratio']:.2f}×) "
                     f"| {r['train_fwd_gflops_b128']:.2f} | {r['train_step_s_b128']:.2f} ({r['train_step_ratio']:.2f}×) |")
    write_text_atomic(a.out + ".md", "\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
