"""Accuracy on MovieLens-100K: softmax vs vae vs diffusion, several training seeds,
deterministic and stochastic sampling, and the diffusion step sweep.

    python -m benchmarks.accuracy                       # full run (see results file for timings)
    python -m benchmarks.accuracy --kinds softmax --seeds 0

Trained checkpoints are kept under --runs; a finished run is reused, so an
interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from genattn.checkpoint import load_checkpoint
from genattn.config import load_run_config
from genattn.data import leave_one_out, load_source
from genattn.evaluation import eval_sets, evaluate
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.metrics import mean_std
from genattn.models import default_sampling, stochastic_sampling
from genattn.training import train

from .machine import machine_info

CONFIGS = Path(__file__).resolve().parents[1] / "genattn" / "configs"
SHOWN = ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10", "ild@10", "novelty@10"]
log = logging.getLogger("benchmarks.accuracy")


def trained(kind: str, seed: int, runs: Path, source: str, max_minutes: float | None) -> Path:
    out = runs / f"{kind}_seed{seed}"
    metrics = out / "metrics.json"
    if metrics.is_file() and "test" in json.loads(metrics.read_text()):
        return out
    run = load_run_config(CONFIGS / f"{kind}.toml", {"train": {"seed": seed, "max_minutes": max_minutes},
                                                         "data": {"source": source}})
    train(run, out, progress=sys.stderr.isatty())
    return out


def stochastic(kind: str, base):
    """The stochastic setting reported beside each deterministic one (diffusion: full DDIM noise)."""
    return stochastic_sampling(kind, base, **({"n_samples": 1} if kind == "vae" else {"eta": 1.0}))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="softmax,vae,diffusion")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--sample-seeds", default="0,1,2", help="sampling seeds for the stochastic modes")
    ap.add_argument("--steps", default="1,2,4,8,16", help="diffusion DDIM step counts to sweep")
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--runs", default="runs/accuracy")
    ap.add_argument("--out", default="benchmarks/results/accuracy_ml100k")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-time budget per training run")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    kinds = a.kinds.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    sample_seeds = [int(s) for s in a.sample_seeds.split(",")]
    steps = [int(s) for s in a.steps.split(",")]
    runs = Path(a.runs)

    ds = load_source(load_run_config(None, {"data": {"source": a.data}}).data)
    sets = eval_sets(leave_one_out(ds))
    result: dict = {"command": "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "data": ds.source, "n_users": ds.n_users, "n_items": ds.n_items,
                    "protocol": "leave-one-out, full ranking over the whole catalog, history items masked",
                    "machine": machine_info()}
    prev = Path(a.out + ".json")
    if prev.is_file():  # keep entries measured by earlier invocations (each records its command)
        result.update({k: v for k, v in json.loads(prev.read_text()).items() if k not in result})
    for kind in kinds:
        per_seed = {"valid": [], "test": [], "stoch_valid": [], "stoch_test": [], "seconds": [], "epochs": []}
        sweep: dict[int, list] = {n: [] for n in steps}
        for seed in seeds:
            path = trained(kind, seed, runs, a.data, a.max_minutes)
            ck = load_checkpoint(path)
            kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres)
            per_seed["valid"].append(ck.metrics["valid"])
            per_seed["test"].append(ck.metrics["test"])
            per_seed["seconds"].append(ck.metrics["train_seconds"])
            per_seed["epochs"].append(len(ck.metrics["history"]))
            base = default_sampling(ck.run.model)
            if base is None:
                continue
            st = stochastic(kind, base)
            for split in ("valid", "test"):
                runs_ = [evaluate(ck.model, sets[split], sampling=st, seed=s, **kw) for s in sample_seeds]
                per_seed[f"stoch_{split}"].append({k: float(np.mean([r[k] for r in runs_])) for k in runs_[0]})
            if kind == "diffusion":
                for n in steps:
                    sweep[n].append(evaluate(ck.model, sets["test"], sampling=replace(base, n_steps=n), **kw))
        entry = {"valid": mean_std(per_seed["valid"]), "test": mean_std(per_seed["test"]),
                 "train_seconds": mean_std([{"s": s} for s in per_seed["seconds"]])["s"],
                 "epochs": per_seed["epochs"], "seeds": seeds, "per_seed_test": per_seed["test"],
                 "config": str(CONFIGS / f"{kind}.toml"), "command": result["command"],
                 "patience": load_run_config(CONFIGS / f"{kind}.toml").train.patience}
        if per_seed["stoch_test"]:
            entry["stochastic"] = {"sampling": stochastic(kind, base).__dict__, "sample_seeds": sample_seeds,
                                   "valid": mean_std(per_seed["stoch_valid"]),
                                   "test": mean_std(per_seed["stoch_test"])}
            entry["deterministic_sampling"] = base.__dict__
        if kind == "diffusion":
            entry["steps"] = {str(n): {"test": mean_std(v)} for n, v in sweep.items() if v}
        result[kind] = entry
        write_json_atomic(a.out + ".json", result)
        write_text_atomic(a.out + ".md", render(result))
    return result


def fmt(ms: dict) -> str:
    return f"{ms['mean']:.4f} ± {ms['std']:.4f}"


def render(r: dict) -> str:
    lines = ["# Accuracy on MovieLens-100K", "",
             f"Data: {r['n_users']} users, {r['n_items']} items; {r['protocol']}.",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), "
             f"torch {r['machine']['versions'].get('torch')}.", "",
             f"Reproduce: `{r['command']}` (mean ± std over training seeds).", ""]
    for split in ("test", "valid"):
        lines += [f"## {split}", "", "| model | sampling | " + " | ".join(SHOWN) + " |",
                  "|---|---|" + "---|" * len(SHOWN)]
        for key in ENTRIES:
            if key not in r:
                continue
            e, kind = r[key], key.split("_")[0]
            det = {"softmax": "deterministic", "vae": "prior mean (deterministic)"}.get(kind) or \
                _samp(e.get("deterministic_sampling", {})) + " (deterministic)"
            lines.append(f"| {_label(key, e)} | {det} | " + " | ".join(fmt(e[split][m]) for m in SHOWN) + " |")
            if "stochastic" in e:
                s = e["stochastic"]
                lines.append(f"| {_label(key, e)} | {_samp(s['sampling'])}, {len(s['sample_seeds'])} sampling seeds† | "
                             + " | ".join(fmt(s[split][m]) for m in SHOWN) + " |")
        lines.append("")
    lines += ["† stochastic rows: each training seed's metrics averaged over the sampling seeds, then mean ± std "
              "over training seeds.", ""]
    lines += [f"Note on {key}: {r[key]['note']}." for key in ENTRIES if key in r and r[key].get("note")]
    lines.append("")
    lines += ["## Training cost (2 CPU cores)", "",
              "Wall time per run, early stopping on validation NDCG@10 or the config's 14-minute budget. "
              "Runs shared the 2 cores with other jobs at times, so these are upper bounds; "
              "`benchmarks/results/cost.md` has per-step ratios measured in one run.", "",
              "| model | wall time per run (s) | epochs run | command |",
              "|---|---|---|---|"]
    for key in ENTRIES:
        if key in r:
            e = r[key]
            ts = e["train_seconds"]
            lines.append(f"| {_label(key, e)} | {ts['mean']:.0f} ± {ts['std']:.0f} | {e['epochs']} | "
                         f"`{e.get('command', r['command'])}` |")
    if "diffusion" in r and r["diffusion"].get("steps"):
        lines += ["", "## Diffusion: DDIM steps at inference (deterministic start, eta = 0), test split", "",
                  "| steps | NDCG@10 | HR@10 | coverage@10 |", "|---|---|---|---|"]
        for n, v in r["diffusion"]["steps"].items():
            lines.append(f"| {n} | {fmt(v['test']['ndcg@10'])} | {fmt(v['test']['hr@10'])} | {fmt(v['test']['coverage@10'])} |")
    return "\n".join(lines) + "\n"


# Entries of the results file, in table order; "<kind>_patience10" keeps an earlier
# run of the same kind made with a shorter early-stopping patience.
ENTRIES = ("softmax", "softmax_patience10", "vae", "vae_patience10", "diffusion")


def _label(key: str, e: dict) -> str:
    kind = key.split("_")[0]
    return f"{kind} (patience {e['patience']})" if "patience" in e else (
        f"{kind} (patience 10)" if key.endswith("patience10") else kind)


def _samp(s: dict) -> str:
    """Only the settings that matter for the kind (Sampling carries both kinds' fields)."""
    if not s:
        return ""
    if s.get("mode") == "sample":
        return f"vae sample, {s['n_samples']} map(s)"
    if "start" in s and (s.get("start") == "noise" or s.get("eta", 0) > 0 or s.get("n_steps")):
        return f"DDIM {s['n_steps']} steps, start={s['start']}, eta={s['eta']}"
    return "vae prior mean"


if __name__ == "__main__":
    main()
