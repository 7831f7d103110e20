"""Training throughput and peak memory against catalog size, batch, loss and attention kind.

    python -m benchmarks.training                      # CPU sweep (minutes)
    python -m benchmarks.training --quick              # seconds: the smoke run one test uses
    python -m benchmarks.training --device cuda        # a GPU card (benchmarks/device_training.sh)
    python -m benchmarks.training --e2e 250000,1000000 # + `genattn train` end to end on synthetic data

A cell times full training steps (forward, backward, AdamW step) of a fresh model of
the kind's default config on random windows (throughput does not depend on what the
weights learned): `events_per_s` counts predicted positions (training targets) per
second after warm-up steps. Every cell runs in its own spawned process, so
`peak_mem_mb` is that cell's own peak: resident memory on CPU, the CUDA allocator's
peak on GPU. A full-CE cell whose logits alone would not fit is recorded as skipped
with the size it would need (that is the point of the sampled loss).

Results: benchmarks/results/<machine>/training.{json,md,png}; cells with `device`,
`kind`, `loss`, `n_items`, `batch`, `events_per_s`, `peak_mem_mb`.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .machine import REPO, machine_info

log = logging.getLogger("benchmarks.training")

KINDS = ("softmax", "vae", "diffusion")
MAX_LEN = 50


def _logit_bytes(batch: int, n_items: int) -> int:
    """Full CE holds logits, their softmax and gradient: about 3 fp32 (P, N + 1) arrays."""
    return 3 * 4 * batch * MAX_LEN * (n_items + 1)


def _cell(spec: dict) -> dict:
    """One cell, in a fresh process."""
    import numpy as np
    import torch

    from genattn.config import TrainConfig, load_run_config
    from genattn.models import SASRec
    from genattn.training import autocast_dtype, make_loss

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    run = load_run_config(REPO / "genattn" / "configs" / f"{spec['kind']}.toml",
                          {"model": {"max_len": MAX_LEN, "d_model": 64, "n_blocks": 2}})  # the backbone of its earlier results
    run.model.n_items = spec["n_items"]
    tc = TrainConfig(loss=spec["loss"], negatives=spec["negatives"], device=spec["device"],
                     in_batch_negatives=spec["in_batch"],
                     compile=spec["compile"])
    model = SASRec(run.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({"fused": True} if dev.type == "cuda" else {}))
    net = torch.compile(model) if spec["compile"] else model
    pop = np.r_[0, np.random.default_rng(0).zipf(1.3, spec["n_items"]).clip(max=10**6)].astype(float)
    loss_fn = make_loss(tc, spec["n_items"], pop, dev, seed=0)
    amp = autocast_dtype(tc, dev)
    g = torch.Generator().manual_seed(0)
    B = spec["batch"]
    xs = torch.randint(1, spec["n_items"] + 1, (4, B, MAX_LEN + 1), generator=g)
    batches = [(x[:, :-1].to(dev), x[:, 1:].to(dev)) for x in xs]  # full windows: B * MAX_LEN targets
    rng = torch.Generator(device=dev).manual_seed(0)

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with torch.autocast(dev.type, dtype=amp) if amp else torch.autocast(dev.type, enabled=False):
            out = net(x, y, rng=rng, loss=loss_fn)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(spec["warmup"]):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, t0 = 0, time.perf_counter()
    while steps < spec["min_steps"] or (time.perf_counter() - t0 < spec["seconds"] and steps < spec["max_steps"]):
        step(steps)
        steps += 1
        if steps % 4 == 0:
            sync()
    sync()
    elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return {"events_per_s": steps * B * MAX_LEN / elapsed, "steps": steps, "seconds": elapsed,
            "ms_per_step": 1000 * elapsed / steps, "peak_mem_mb": peak}


def run_cell(spec: dict, mem_budget: int) -> dict:
    row = {k: spec[k] for k in ("device", "kind", "loss", "n_items", "batch")}
    row["negatives"] = spec["negatives"] if spec["loss"] == "sampled" else None
    row["in_batch"] = spec["in_batch"] if spec["loss"] == "sampled" else None
    if spec["loss"] == "full" and _logit_bytes(spec["batch"], spec["n_items"]) > mem_budget:
        need = _logit_bytes(spec["batch"], spec["n_items"]) / 2**30
        return {**row, "events_per_s": None, "peak_mem_mb": None,
                "skipped": f"full-CE logits alone need ~{need:.1f} GiB (budget {mem_budget / 2**30:.0f} GiB)"}
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        try:
            res = pool.apply(_cell, (spec,))
        except Exception as e:  # noqa: BLE001 - one failed cell is recorded, the sweep goes on
            return {**row, "events_per_s": None, "peak_mem_mb": None, "skipped": f"{type(e).__name__}: {e}"[:300]}
    log.info("%s %s %s n=%d B=%d: %.0f events/s, %.0f MB", spec["device"], spec["kind"], spec["loss"],
             spec["n_items"], spec["batch"], res["events_per_s"], res["peak_mem_mb"])
    return {**row, **res}


def plan(a) -> list[dict]:
    base = dict(device=a.device, negatives=a.negatives, threads=a.threads, compile=a.compile,
                warmup=a.warmup, min_steps=a.min_steps, max_steps=a.max_steps, seconds=a.seconds)
    cells = []
    for kind in a.kinds:
        for n in a.items:
            for loss in a.losses:
                for b in a.batches:
                    for ib in (a.in_batch if loss == "sampled" else [False]):
                        cells.append({**base, "kind": kind, "loss": loss, "n_items": n, "batch": b, "in_batch": ib})
    return cells


def end_to_end(users: int, items: int, a) -> dict:
    """`genattn train` on synthetic data of this size with sampled softmax, one epoch:
    data generation + dataset build time, training events/s, the process's peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "genattn.cli", "train", "--data", "synthetic",
               "--synthetic-users", str(users), "--synthetic-items", str(items), "--attention", "softmax",
               "--loss", "sampled", "--negatives", str(a.negatives), "--epochs", "1",
               "--in-batch" if a.in_batch[0] else "--no-in-batch",
               "--eval-users", str(a.e2e_eval_users), "--device", a.device, "--threads", str(a.threads),
               "--batch-size", str(a.e2e_batch), "--no-progress", "-o", str(Path(tmp) / "ck")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        if proc.returncode != 0:
            return {"users": users, "n_items": items, "error": proc.stderr[-800:]}
        m = json.loads((Path(tmp) / "ck" / "metrics.json").read_text())
    return {"users": users, "n_items": items, "loss": "sampled", "negatives": a.negatives, "in_batch": a.in_batch[0],
            "batch": a.e2e_batch, "data_seconds": m["data_seconds"], "train_seconds": m["train_seconds"],
            "events_per_s": m["events_per_s"][0], "peak_mem_mb": peak, "wall_seconds": wall,
            "eval_users": a.e2e_eval_users, "valid_ndcg@10": m["valid"]["ndcg@10"],
            "command": "genattn " + " ".join(cmd[3:-2]) + " -o DIR"}


def render(r: dict) -> str:
    lines = [f"# Training throughput ({r['machine_slug']})", "",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), GPU: {r['machine']['gpu']}; "
             f"torch {r['machine']['versions'].get('torch')}; {r['threads']} torch threads; "
             f"load average {r['load_average']['before'][0]:.1f} before, {r['load_average']['after'][0]:.1f} after "
             "(other jobs share the machine when it is above the cores in use).", "",
             "Events = predicted positions (training targets); max_len 50, each kind's default config, "
             "random windows. `peak_mem_mb`: the cell's own process (CPU RSS) or CUDA allocator peak.", "",
             "| device | kind | loss | negatives | in-batch | n_items | batch | events/s | ms/step | peak MB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        eps = f"{c['events_per_s']:,.0f}" if c.get("events_per_s") else "—"
        ms = f"{c['ms_per_step']:.1f}" if c.get("ms_per_step") else "—"
        mem = f"{c['peak_mem_mb']:,.0f}" if c.get("peak_mem_mb") else "—"
        ib = {True: "yes", False: "no"}.get(c.get("in_batch", True if c["loss"] == "sampled" else None), "")
        lines.append(f"| {c['device']} | {c['kind']} | {c['loss']} | {c.get('negatives') or ''} | {ib} | {c['n_items']:,} | "
                     f"{c['batch']} | {eps} | {ms} | {mem} | {c.get('skipped', '')} |")
    if r.get("end_to_end"):
        lines += ["", "## End to end (`genattn train`, synthetic data, sampled softmax, 1 epoch)", "",
                  "| users | items | data s | train s | events/s | peak MB | valid NDCG@10 (eval users) |",
                  "|---|---|---|---|---|---|---|"]
        for e in r["end_to_end"]:
            if "error" in e:
                lines.append(f"| {e['users']:,} | {e['n_items']:,} | error: {e['error'][-200:]} |||||")
                continue
            lines.append(f"| {e['users']:,} | {e['n_items']:,} | {e['data_seconds']:.1f} | {e['train_seconds']:.0f} | "
                         f"{e['events_per_s']:,.0f} | {e['peak_mem_mb']:,.0f} | "
                         f"{e['valid_ndcg@10']:.4f} ({e['eval_users']}) |")
        lines += ["", "Each row runs `" + r["end_to_end"][0].get("command", "") + "`, launched by `"
                  + r.get("e2e_command", r["command"]) + "`."]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for c in r["cells"]:
        if c.get("events_per_s"):
            ib = c.get("in_batch", True) if c["loss"] == "sampled" else None
            loss = c["loss"] if ib is None else f"sampled{'' if ib else ', no in-batch'}"
            series.setdefault((c["kind"], loss, c["batch"]), []).append((c["n_items"], c["events_per_s"]))
    styles = {"full": "--", "sampled": "-"}
    for (kind, loss, b), pts in sorted(series.items()):
        pts.sort()
        ax.plot(*zip(*pts), marker="o", linestyle=styles.get(loss, ":"), label=f"{kind} {loss} B={b}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("training events / s")
    ax.set_title(f"Training throughput, {r['machine_slug']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--items", default="1e3,1e4,1e5,1e6", help="catalog sizes")
    ap.add_argument("--batches", default="128", help="global batch sizes (windows of 50)")
    ap.add_argument("--losses", default="full,sampled")
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--in-batch", default="on", help="sampled cells: in-batch negatives 'on', 'off' or 'on,off'")
    ap.add_argument("--merge", action="store_true",
                    help="keep the existing results' cells that this run does not measure again")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each cell's model")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per cell (after warm-up)")
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-budget-gb", type=float, default=None,
                    help="skip full-CE cells whose logits need more (default: 60%% of RAM / GPU memory)")
    ap.add_argument("--e2e", action="append", default=[], metavar="USERS,ITEMS",
                    help="also run `genattn train` end to end on synthetic data of this size")
    ap.add_argument("--e2e-eval-users", type=int, default=2000)
    ap.add_argument("--e2e-batch", type=int, default=128)
    ap.add_argument("--e2e-only", action="store_true",
                    help="run only the --e2e runs and replace that section of the existing results")
    ap.add_argument("--quick", action="store_true", help="a few tiny cells (seconds)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<machine>)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.quick:
        a.items, a.batches, a.seconds, a.min_steps, a.warmup = "2000", "8", 0.0, 2, 1
        a.kinds = "softmax,vae"
        a.negatives = min(a.negatives, 64)
    a.kinds = [k for k in a.kinds.split(",") if k]
    bad = sorted(set(a.kinds) - set(KINDS))
    if bad:
        ap.error(f"unknown kind(s) {bad}; choose from {KINDS}")
    a.items, a.batches = _ints(a.items), _ints(a.batches)
    a.losses = [x for x in a.losses.split(",") if x]
    a.in_batch = [{"on": True, "off": False}[x] for x in a.in_batch.split(",") if x]
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device")
        total = torch.cuda.get_device_properties(0).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget = int(a.mem_budget_gb * 2**30) if a.mem_budget_gb else int(0.6 * total)
    a.threads = a.threads or (os.cpu_count() or 1)

    from .latency import machine_slug

    info = machine_info()
    slug = machine_slug(info, a.threads)
    out = Path(a.out) if a.out else REPO / "benchmarks" / "results" / slug
    out.mkdir(parents=True, exist_ok=True)
    name = "training_quick" if a.quick else "training"
    command = ("python -m benchmarks.training " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    if a.e2e_only:
        if not (out / f"{name}.json").exists():
            ap.error(f"--e2e-only: no {name}.json in {out} to add to")
        r = json.loads((out / f"{name}.json").read_text())
        r["end_to_end"] = [{**end_to_end(*_ints(spec), a), "load_average": os.getloadavg()} for spec in a.e2e]
        r["e2e_command"] = command
    else:
        load_before = os.getloadavg()
        cells = [run_cell(spec, budget) for spec in plan(a)]
        e2e = [end_to_end(*_ints(spec), a) for spec in a.e2e]
        load = {"before": load_before, "after": os.getloadavg()}  # 1/5/15-min load: other jobs on the machine
        r = {"machine": info, "machine_slug": slug, "threads": a.threads, "command": command,
             "load_average": load, "cells": cells, "end_to_end": e2e}
        if a.merge and (out / f"{name}.json").exists():
            old = json.loads((out / f"{name}.json").read_text())
            def key(c: dict) -> tuple:  # cells written before the in-batch axis had it on
                ib = c.get("in_batch", True if c["loss"] == "sampled" else None)
                return tuple(c.get(f) for f in ("device", "kind", "loss", "n_items", "batch", "negatives")) + (ib,)
            new_keys = {key(c) for c in cells}
            r["cells"] = [c for c in old["cells"] if key(c) not in new_keys] + cells
            r["command"] = old["command"] + " ; " + command
            r["end_to_end"] = e2e or old.get("end_to_end", [])
    for suffix, text in ((".json", json.dumps(r, indent=2) + "\n"), (".md", render(r))):
        tmp = out / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / f"{name}{suffix}")
    plot(r, out / f"{name}.png")
    print(render(r))
    return r


if __name__ == "__main__":
    main()
