"""Equal-budget hyper-parameter search: every attention kind gets the very same trials
over the shared knobs (dropout, learning rate, weight decay, width, blocks, max_len),
selected on validation NDCG@10 only — so a generative kind is compared with a softmax
baseline tuned as hard as itself.

    python -m benchmarks.search --data ml-100k --kinds softmax,vae,diffusion --trials 6

Trial t draws its knobs from one seeded generator, identical for every kind (a paired
design). The kind's own default config supplies everything else. Writes
benchmarks/results/search_<data>.{json,md} and, per kind, the winning configuration as
TOML under --runs (feed it to `python -m benchmarks.accuracy --configs NAME=PATH`).
Finished trials are reused, so an interrupted search continues.
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np

from genattn.config import load_run_config
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.training import train

from .accuracy import CONFIGS, parse_sets, short_name
from .machine import machine_info

# The shared knobs (model / train tables) and their candidate values.
SPACE = {
    ("model", "dropout"): [0.1, 0.2, 0.3, 0.5],
    ("train", "lr"): [5e-4, 1e-3, 2e-3],
    ("train", "weight_decay"): [0.0, 0.01, 0.1],
    ("model", "d_model"): [32, 64, 128],
    ("model", "n_blocks"): [1, 2, 3],
    ("model", "max_len"): [50, 100],
}


def draw_trials(n: int, seed: int) -> list[dict[str, dict]]:
    """Trial 0 is the defaults (no change); the rest are random draws from SPACE."""
    rng = np.random.default_rng(seed)
    trials: list[dict[str, dict]] = [{"model": {}, "train": {}}]
    while len(trials) < n:
        t: dict[str, dict] = {"model": {}, "train": {}}
        for (table, key), values in SPACE.items():
            t[table][key] = values[int(rng.integers(len(values)))]
        trials.append(t)
    return trials


def merged(base: dict[str, dict], *more: dict[str, dict]) -> dict[str, dict]:
    out = {k: dict(v) for k, v in base.items()}
    for m in more:
        for table, vals in m.items():
            out.setdefault(table, {}).update(vals)
    return out


def to_toml(cfg_path: Path, over: dict[str, dict]) -> str:
    """The kind's config file with the overrides applied, as TOML text."""
    raw = tomllib.loads(cfg_path.read_text())
    lines = [f"# {cfg_path.name} + search winner"]
    for table in ("model", "train", "data"):
        vals = {**raw.get(table, {}), **over.get(table, {})}
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in vals.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="softmax,vae,diffusion")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="seed of the trial draws and of training")
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                    help="override for every trial (e.g. train.epochs=40 train.threads=1)")
    ap.add_argument("--runs", default="runs/search")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    out = a.out or f"benchmarks/results/search_{short_name(a.data)}"
    runs = Path(a.runs) / a.data
    fixed = parse_sets(a.sets)
    trials = draw_trials(a.trials, a.seed)
    r = {"command": "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:]),
         "machine": machine_info(), "data": a.data, "space": {f"{t}.{k}": v for (t, k), v in SPACE.items()},
         "selection": "best validation NDCG@10 (test never looked at)", "kinds": {}}
    for kind in a.kinds.split(","):
        cfg_path = CONFIGS / f"{kind}.toml"
        rows = []
        for i, t in enumerate(trials):
            path = runs / f"{kind}_trial{i}"
            metrics = path / "metrics.json"
            if not (metrics.is_file() and "test" in json.loads(metrics.read_text())):
                over = merged(fixed, t, {"train": {"seed": a.seed}, "data": {"source": a.data}})
                train(load_run_config(cfg_path, over), path, progress=sys.stderr.isatty())
            m = json.loads(metrics.read_text())
            rows.append({"trial": i, "knobs": t, "valid_ndcg@10": m["best_valid_ndcg@10"],
                         "best_epoch": m["best_epoch"], "epochs": len(m["history"]),
                         "train_seconds": m["train_seconds"], "test_ndcg@10": m["test"]["ndcg@10"]})
            best = max(rows, key=lambda row: row["valid_ndcg@10"])
            toml_path = runs / f"{kind}_best.toml"
            write_text_atomic(toml_path, to_toml(cfg_path, merged(fixed, best["knobs"])))
            r["kinds"][kind] = {"trials": rows, "best_trial": best["trial"], "best_config": str(toml_path)}
            write_json_atomic(out + ".json", r)
            write_text_atomic(out + ".md", render(r))
    return r


def render(r: dict) -> str:
    lines = [f"# Equal-budget search on {r['data']}", "", f"Reproduce: `{r['command']}`",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores).",
             f"Selection: {r['selection']}. Test NDCG@10 of each trial is shown only to judge the selection.", "",
             "| kind | trial | knobs | valid NDCG@10 | test NDCG@10 | epochs (best) | seconds |",
             "|---|---|---|---|---|---|---|"]
    for kind, k in r["kinds"].items():
        for row in k["trials"]:
            knobs = ", ".join(f"{key}={v}" for tab in row["knobs"].values() for key, v in tab.items()) or "defaults"
            star = " **(selected)**" if row["trial"] == k["best_trial"] else ""
            lines.append(f"| {kind} | {row['trial']}{star} | {knobs} | {row['valid_ndcg@10']:.4f} | "
                         f"{row['test_ndcg@10']:.4f} | {row['epochs']} ({row['best_epoch']}) | {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
