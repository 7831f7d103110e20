"""Accuracy of trained configurations: several training seeds, deterministic and
stochastic serving, S averaged samples, and the diffusion step sweep.

    python -m benchmarks.accuracy                                  # softmax, vae, diffusion on ML-100K
    python -m benchmarks.accuracy --data ml-1m --configs softmax --seeds 0 --set train.epochs=30
    python -m benchmarks.accuracy --configs vae_free=runs/cfg/vae_free.toml   # any TOML, own key

A configuration is NAME (genattn/configs/NAME.toml) or NAME=PATH; NAME is its key in
the results file. Trained checkpoints are kept under --runs/<dataset>/<name>_seed<s>;
a finished run is reused, so an interrupted benchmark continues where it stopped.
Results: benchmarks/results/accuracy_<dataset>.{json,md}; entries measured by earlier
invocations are kept (each records its command).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
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

from .machine import machine_info, repo_path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "genattn" / "configs"
SHOWN = ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10", "ild@10", "novelty@10"]
SAMPLES = (1, 4, 16)
log = logging.getLogger("benchmarks.accuracy")


def parse_sets(items: list[str]) -> dict[str, dict]:
    """--set table.key=value (value parsed as JSON when it can be, else a string)."""
    out: dict[str, dict] = {"model": {}, "train": {}, "data": {}}
    for item in items:
        key, _, raw = item.partition("=")
        table, _, field = key.partition(".")
        if table not in out or not field or not raw:
            raise SystemExit(f"--set expects table.key=value with table model|train|data, got {item!r}")
        try:
            out[table][field] = json.loads(raw)
        except json.JSONDecodeError:
            out[table][field] = raw
    return out


def resolve(spec: str) -> tuple[str, Path]:
    name, _, path = spec.partition("=")
    p = Path(path) if path else CONFIGS / f"{name}.toml"
    if not p.is_file():
        raise SystemExit(f"configuration {name!r}: no such file {p}")
    return name, p


def train_or_resume(run, out: Path) -> Path:
    """Train `run` into `out`; a finished run is reused, an interrupted one resumed from
    its last epoch, so a benchmark can span sessions."""
    metrics = out / "metrics.json"
    if metrics.is_file() and "test" in json.loads(metrics.read_text()):
        return out
    resume = (out / "state.json").is_file()
    if resume:
        log.info("resuming %s", out)
    train(run, out, resume=resume, progress=sys.stderr.isatty())
    return out


def trained(name: str, cfg_path: Path | None, seed: int, runs: Path, data: str, sets: dict) -> Path:
    over = {t: dict(v) for t, v in sets.items()}
    over["train"]["seed"] = seed
    over["data"]["source"] = data
    return train_or_resume(load_run_config(cfg_path, over), runs / f"{name}_seed{seed}")


def stochastic(kind: str, base):
    """The stochastic setting reported beside each deterministic one (vae: a prior sample;
    diffusion: noise start and eta 1, full DDIM noise). The collapse and frontier
    benchmarks use the same one."""
    return stochastic_sampling(kind, base, **({} if kind == "vae" else {"eta": 1.0}))


def short_name(data: str) -> str:
    return data.replace("-", "").replace("_", "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", "--kinds", dest="configs", default="softmax,vae,diffusion",
                    help="comma-separated NAME or NAME=PATH")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--sample-seeds", default="0,1,2", help="sampling seeds for the stochastic modes")
    ap.add_argument("--steps", default="1,2,4,8,16", help="diffusion DDIM step counts to sweep")
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                    help="override a config value for every configuration (e.g. train.epochs=30)")
    ap.add_argument("--runs", default="runs/accuracy")
    ap.add_argument("--out", help="results path without suffix (default benchmarks/results/accuracy_<data>)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = [resolve(s) for s in a.configs.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    sample_seeds = [int(s) for s in a.sample_seeds.split(",")]
    steps = [int(s) for s in a.steps.split(",")]
    sets = parse_sets(a.sets)
    out = a.out or f"benchmarks/results/accuracy_{short_name(a.data)}"
    runs = Path(a.runs) / a.data

    ds = load_source(load_run_config(None, {"data": {**sets["data"], "source": a.data}}).data)
    split_sets = eval_sets(leave_one_out(ds))
    command = "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict = {"command": command, "data": a.data, "n_users": ds.n_users, "n_items": ds.n_items,
                    "protocol": "leave-one-out, full ranking over the whole catalog, history items masked",
                    "machine": machine_info()}
    for name, cfg_path in specs:
        per_seed: dict[str, list] = {"valid": [], "test": [], "stoch_valid": [], "stoch_test": [],
                                     "seconds": [], "epochs": []}
        sweep: dict[str, list] = {}
        run_cfg = None
        for seed in seeds:
            ck = load_checkpoint(trained(name, cfg_path, seed, runs, a.data, sets))
            run_cfg, kind = ck.run, ck.run.model.attention
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
                rs = [evaluate(ck.model, split_sets[split], sampling=st, seed=s, **kw) for s in sample_seeds]
                per_seed[f"stoch_{split}"].append({k: float(np.mean([r[k] for r in rs])) for k in rs[0]})
            for S in SAMPLES:
                sweep.setdefault(f"samples_{S}", []).append(
                    evaluate(ck.model, split_sets["test"], sampling=replace(st, n_samples=S), seed=0, **kw))
            if kind == "diffusion":
                for n in steps:
                    sweep.setdefault(f"steps_{n}", []).append(
                        evaluate(ck.model, split_sets["test"], sampling=replace(base, n_steps=n), **kw))
                    sweep.setdefault(f"steps_{n}_stochastic", []).append(
                        evaluate(ck.model, split_sets["test"], sampling=replace(st, n_steps=n), seed=0, **kw))
        model_cfg = asdict(run_cfg.model)
        model_cfg.pop("n_items", None)
        entry = {"config": {"attention": run_cfg.model.attention, "file": repo_path(cfg_path), "overrides": sets,
                            "model": model_cfg, "train": asdict(run_cfg.train)},
                 "valid": mean_std(per_seed["valid"]), "test": mean_std(per_seed["test"]),
                 "train_seconds": mean_std([{"s": s} for s in per_seed["seconds"]])["s"],
                 "epochs": per_seed["epochs"], "seeds": seeds, "per_seed_test": per_seed["test"],
                 "command": command, "machine": result["machine"]["cpu"]}
        if per_seed["stoch_test"]:
            entry["deterministic_sampling"] = base.__dict__
            entry["stochastic"] = {"sampling": stochastic(kind, base).__dict__, "sample_seeds": sample_seeds,
                                   "valid": mean_std(per_seed["stoch_valid"]),
                                   "test": mean_std(per_seed["stoch_test"])}
            entry["sweeps_test"] = {k: mean_std(v) for k, v in sweep.items()}
        result[name] = entry
        # Keep entries other invocations wrote (each records its command); read at write time,
        # so two benchmarks running at once do not drop each other's entries.
        prev = Path(out + ".json")
        merged = {**(json.loads(prev.read_text()) if prev.is_file() else {}), **result}
        write_json_atomic(out + ".json", merged)
        write_text_atomic(out + ".md", render(merged))
    return result


def fmt(ms: dict, n: int = 2) -> str:
    """mean ± std over training seeds; one seed has no std to show."""
    return f"{ms['mean']:.4f}" if n < 2 else f"{ms['mean']:.4f} ± {ms['std']:.4f}"


def entries(r: dict) -> list[str]:
    return [k for k, v in r.items() if isinstance(v, dict) and "per_seed_test" in v]


def render(r: dict) -> str:
    lines = [f"# Accuracy on {r['data']}", "",
             f"Data: {r['n_users']} users, {r['n_items']} items; {r['protocol']}.",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), "
             f"torch {r['machine']['versions'].get('torch')}.", "",
             "Mean ± std over training seeds (a single value: one seed); each entry names the command that "
             "produced it (below).", ""]
    for split in ("test", "valid"):
        lines += [f"## {split}", "", "| configuration | kind | sampling | " + " | ".join(SHOWN) + " |",
                  "|---|---|---|" + "---|" * len(SHOWN)]
        for key in entries(r):
            e = r[key]
            kind = e["config"]["attention"] if isinstance(e["config"], dict) else key.split("_")[0]
            det = "deterministic" if kind == "softmax" else _samp(e.get("deterministic_sampling", {}), kind)
            n = len(e.get("seeds", [0, 1]))
            lines.append(f"| {key} | {kind} | {det} | " + " | ".join(fmt(e[split][m], n) for m in SHOWN) + " |")
            if "stochastic" in e:
                s = e["stochastic"]
                lines.append(f"| {key} | {kind} | {_samp(s['sampling'], kind)}, {len(s['sample_seeds'])} sampling "
                             f"seeds† | " + " | ".join(fmt(s[split][m], n) for m in SHOWN) + " |")
        lines.append("")
    lines += ["† stochastic rows: each training seed's metrics averaged over the sampling seeds, then mean ± std "
              "over training seeds.", ""]
    sweeps = [k for k in entries(r) if r[k].get("sweeps_test")]
    if sweeps:
        lines += ["## Serving knobs, test split (sampling seed 0)", "",
                  "`samples_S`: S sampled maps, scores averaged (stochastic sampling); `steps_n`: diffusion with n "
                  "DDIM steps, deterministic; `steps_n_stochastic`: noise start, eta 1, one sample.", "",
                  "| configuration | knob | NDCG@10 | HR@10 | coverage@10 |", "|---|---|---|---|---|"]
        for key in sweeps:
            n = len(r[key].get("seeds", [0, 1]))
            for knob, v in r[key]["sweeps_test"].items():
                lines.append(f"| {key} | {knob} | {fmt(v['ndcg@10'], n)} | {fmt(v['hr@10'], n)} | "
                             f"{fmt(v['coverage@10'], n)} |")
        lines.append("")
    lines += ["## Training cost and commands", "",
              "| configuration | wall time per run (s) | epochs run | command |", "|---|---|---|---|"]
    for key in entries(r):
        e = r[key]
        ts = e["train_seconds"]
        wall = f"{ts['mean']:.0f}" if len(e.get("seeds", [0, 1])) < 2 else f"{ts['mean']:.0f} ± {ts['std']:.0f}"
        lines.append(f"| {key} | {wall} | {e['epochs']} | `{e.get('command', r['command'])}` |")
    notes = [f"- {key}: {r[key]['note']}" for key in entries(r) if r[key].get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _samp(s: dict, kind: str) -> str:
    """Only the settings that matter for the kind (Sampling carries both kinds' fields)."""
    if not s:
        return ""
    if kind == "vae":
        return f"prior sample, S={s['n_samples']}" if s.get("mode") == "sample" else "prior mean (deterministic)"
    det = s.get("start") == "zeros" and not s.get("eta")
    return f"DDIM {s['n_steps']} steps, start={s['start']}, eta={s['eta']}" + (" (deterministic)" if det else "")


if __name__ == "__main__":
    main()
