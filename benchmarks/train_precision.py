"""Training step time in fp32 against bf16 autocast on this CPU, per kind (the selected ML-100K
configurations at their own max_len, batch 128, full CE): whether `--precision bf16` is worth a
validation check here. Only CPUs with AVX512-BF16 or AMX run bf16 matrix work natively (the
flags are recorded); elsewhere autocast emulates it.

    python -m benchmarks.train_precision --threads 1 --out benchmarks/results/cpu-2core-amd-epyc/train_precision

Steps of the two precisions alternate (A/B, one process), so a busy machine slows both alike;
compare the ratio, not the milliseconds. Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from genattn.config import load_run_config
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.models import SASRec

from .machine import git_commit, machine_info, repo_path

CONFIGS = Path(__file__).resolve().parents[0] / "results" / "search_ml100k_selected"
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(set(flags) & set(BF16_FLAGS))


def step_times(kind: str, repeats: int, n_items: int, batch: int) -> dict:
    run = load_run_config(CONFIGS / f"{kind}.toml")
    L = run.model.max_len
    torch.manual_seed(0)
    model = SASRec(dataclasses.replace(run.model, n_items=n_items))
    opt = torch.optim.AdamW(model.parameters(), lr=run.train.lr)
    x = torch.randint(1, n_items, (batch, L))
    y = torch.randint(1, n_items, (batch, L))
    rng = torch.Generator().manual_seed(0)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, y, rng=rng, beta=run.model.beta, loss=None, n_targets=batch * L, ages=None)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return (time.perf_counter() - t0) * 1e3

    step(False), step(True)  # warm-up: first-call allocations and kernel selection
    times = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        times["fp32"].append(step(False))
        times["bf16"].append(step(True))
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {"max_len": L, "fp32_ms": fp32, "bf16_ms": bf16, "speedup": fp32 / bf16}


def render(r: dict) -> str:
    lines = ["# Training step, fp32 against bf16 autocast (CPU)", "",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), bf16 CPU flags: "
             f"{', '.join(r['cpu_bf16_flags']) or 'none'}; {r['threads']} thread(s); commit {r['commit']}.",
             f"Command: `{r['command']}`", "",
             f"Batch {r['batch']}, {r['n_items']} items, full CE, median of {r['repeats']} alternating steps.", "",
             "| kind | max_len | fp32 ms | bf16 ms | speed-up |", "|---|---|---|---|---|"]
    for kind, k in r["kinds"].items():
        lines.append(f"| {kind} | {k['max_len']} | {k['fp32_ms']:.0f} | {k['bf16_ms']:.0f} | {k['speedup']:.2f}x |")
    lines += ["", "A speed-up is worth keeping only if validation holds under bf16 (docs/results.md, \"bf16 autocast on CPU\")."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="softmax,vae,diffusion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--items", type=int, default=1682, help="catalog size (ML-100K's by default)")
    ap.add_argument("--out", required=True, help="results path without suffix")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = {"command": "python -m benchmarks.train_precision " + " ".join(argv if argv is not None else sys.argv[1:]),
         "commit": git_commit(), "machine": machine_info(), "cpu_bf16_flags": cpu_flags(), "threads": a.threads,
         "repeats": a.repeats, "batch": a.batch, "n_items": a.items,
         "configs": repo_path(CONFIGS), "kinds": {}}
    for kind in a.kinds.split(","):
        r["kinds"][kind] = step_times(kind, a.repeats, a.items, a.batch)
        print(kind, {k: round(v, 2) for k, v in r["kinds"][kind].items()}, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out + ".json", r)
    write_text_atomic(a.out + ".md", render(r))
    return r


if __name__ == "__main__":
    main()
