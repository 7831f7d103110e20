"""Equal-budget hyper-parameter search: every attention kind gets the same number of
trials, the same training budget, and the same draws of the shared knobs (dropout,
learning rate, weight decay, width, blocks, max_len); the generative kinds also draw
their own knobs (beta, its warm-up, gamma, posterior gain, pair width, sampler steps).
Selection on validation NDCG@10 only.

    python -m benchmarks.search --data ml-100k --trials 8                   # every kind, full CE
    python -m benchmarks.search --trials 8 --worker 0/2 &   python -m benchmarks.search --trials 8 --worker 1/2
    python -m benchmarks.search --loss bce --trials 8                       # the paper's protocol

Trial t's shared knobs come from one seeded generator, identical for every kind (a
paired design); a kind's own knobs from a generator of its own, so adding a kind never
changes another kind's draws. Trial 0 is each kind's starting point, unchanged. Tasks run trial by
trial across kinds, so an interrupted search leaves every kind with nearly the same
number of trials; `--worker i/n` splits the tasks between n processes. Every trial starts from
the kinds' earlier shared defaults (benchmarks/configs/earlier_defaults/: 64 wide, 2 blocks,
lr 1e-3, the published SASRec setting), which the ML-100K search ran from; the drawn knobs
replace them. (The package's defaults are now this search's winners.)

Resumable across sessions: finished trials are kept in
benchmarks/results/search_<data>.json (`trials`: kind, loss, params, valid NDCG@10, best
epoch, seconds) and skipped when the same trial is asked again; a trial cut short
resumes from its checkpoint under --runs. A fresh checkout has no runs/, so before a
session ends `--park` copies the unfinished trials' checkpoints (about 7 MB each at ML-100K
sizes) to benchmarks/results/search_<data>_inflight/, to be committed; a trial whose run
folder is missing resumes from there, and its parked copy is dropped once it finishes.
`--seeds-per-trial S` trains each trial with S paired seeds (seed, seed + 1, ...) and ranks it
on their mean validation NDCG@10: one seed's score moves with where patience stops as much
as with the knobs (diffusion's ML-100K winner, picked on one seed, did not hold on two more).
Each kind's (and loss's) winner is written as `selected` and as a TOML file under
benchmarks/results/search_<data>_selected/ for `python -m benchmarks.accuracy --configs NAME=PATH`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from genattn.checkpoint import load_checkpoint
from genattn.config import load_run_config
from genattn.fileio import write_text_atomic

from .accuracy import EARLIER_DEFAULTS as BASE  # every trial's starting point
from .accuracy import merged, parse_sets, train_or_resume
from .inflight import park
from .machine import git_commit, machine_info, repo_path, results_stem
from .record import update_results

log = logging.getLogger("benchmarks.search")

# Shared knobs: every kind draws the same values in trial t.
SPACE = {
    ("model", "dropout"): [0.1, 0.2, 0.3, 0.5],
    ("train", "lr"): [5e-4, 1e-3, 2e-3],
    ("train", "weight_decay"): [0.0, 0.01, 0.1],
    ("model", "d_model"): [32, 64, 128],
    ("model", "n_blocks"): [1, 2, 3],
    ("model", "max_len"): [50, 100],
}
# Each generative kind's own knobs. The KL / bound warm-up is one of them: the diffusion
# defaults peaked during the 500-step warm-up and declined once beta was at full strength.
# The training noise too: with the prior path's draw off, or sigma clamped to <= 1, the VAE's
# generated map carried information the backbone used (benchmarks/results/diagnose_ml100k.md).
GENERATIVE = {
    ("model", "logstd_max"): [0.0, 1.0, 2.0],
    ("model", "train_prior_noise"): [True, False],
    ("model", "beta"): [0.03, 0.1, 0.3, 1.0],
    ("model", "beta_warmup_steps"): [0, 500, 2000, 5000],
    ("model", "gamma"): [0.5, 1.0, 2.0],
    ("model", "posterior_gain"): [0.5, 1.0, 2.0],
    ("model", "pair_hidden"): [8, 16],
}
KIND_SPACE: dict[str, dict] = {
    "softmax": {},
    "vae": GENERATIVE,
    "diffusion": {**GENERATIVE, ("model", "train_sample_steps"): [1, 2, 4]},
}
# The budget every trial of every kind gets (overridable with --set, recorded in the results).
BUDGET = {"patience": 20, "epochs": 200, "max_minutes": 0.0}


def _draw(space: dict, rng: np.random.Generator) -> dict[str, dict]:
    out: dict[str, dict] = {"model": {}, "train": {}}
    for (table, key), values in space.items():
        out[table][key] = values[int(rng.integers(len(values)))]
    return out


def draw_trials(n: int, seed: int, kind: str = "softmax") -> list[dict[str, dict]]:
    """Trial 0 is the kind's starting point, BASE (no change); trial t > 0 draws the shared knobs from
    one generator (the same for every kind) and the kind's own from another."""
    shared = np.random.default_rng(seed)
    own = np.random.default_rng([seed, zlib.crc32(kind.encode())])
    trials: list[dict[str, dict]] = [{"model": {}, "train": {}}]
    while len(trials) < n:
        t = _draw(SPACE, shared)
        extra = _draw(KIND_SPACE.get(kind, {}), own)
        trials.append({table: {**t[table], **extra[table]} for table in t})
    return trials


def to_toml(kind: str, over: dict[str, dict], note: str) -> str:
    """The kind's starting point (BASE) with the overrides applied, as TOML text."""
    import tomllib

    raw = tomllib.loads((BASE / f"{kind}.toml").read_text())
    lines = [f"# {repo_path(BASE / f'{kind}.toml')} + {note}"]
    for table in ("model", "train", "data"):
        vals = {**raw.get(table, {}), **over.get(table, {})}
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in vals.items()]
    return "\n".join(lines) + "\n"


def same_trial(row: dict, kind: str, loss: str, trial: int, params: dict, budget: dict, seeds: list[int]) -> bool:
    return ((row["kind"], row["loss"], row["trial"], row["params"], row["budget"], trial_seeds(row))
            == (kind, loss, trial, params, budget, seeds))


def trial_seeds(row: dict) -> list[int]:
    """The training seeds a results row was scored on (rows of one seed say only `seed`)."""
    return row.get("seeds", [row.get("seed", 0)])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="softmax,vae,diffusion")
    ap.add_argument("--trials", type=int, default=8, help="trials per kind (trial 0: the kind's starting point)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the trial draws and of training")
    ap.add_argument("--seeds-per-trial", type=int, default=1,
                    help="train each trial with this many paired seeds and rank it on their mean validation NDCG@10")
    ap.add_argument("--loss", default="full", choices=["full", "sampled", "bce"])
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                    help="override for every trial (e.g. train.threads=1 train.patience=10)")
    ap.add_argument("--worker", default="0/1", help="i/n: run every n-th task starting at i (parallel processes)")
    ap.add_argument("--runs", default="runs/search")
    ap.add_argument("--out")
    ap.add_argument("--park", action="store_true",
                    help="copy the unfinished trials' checkpoints to <out>_inflight (commit it) and exit")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    wi, wn = (int(x) for x in a.worker.split("/"))
    if not 0 <= wi < wn:
        raise SystemExit(f"--worker must be i/n with 0 <= i < n, got {a.worker}")
    kinds = a.kinds.split(",")
    unknown = [k for k in kinds if k not in KIND_SPACE]
    if unknown:
        raise SystemExit(f"unknown kind(s) {unknown}; known: {', '.join(KIND_SPACE)}")
    out = a.out or results_stem("search", a.data)
    runs = Path(a.runs) / a.data
    carried = Path(out + "_inflight")
    if a.park:
        done = _read(out)
        finished = {run_name(r["kind"], r["loss"], r["trial"], s, r.get("seed", 0))
                    for r in done.get("trials", []) for s in trial_seeds(r)}
        parked = park(runs, carried, finished, "*_trial*")
        print(f"parked {len(parked)} unfinished trial(s) in {carried}: {', '.join(parked) or 'none'}")
        return done
    fixed = parse_sets(a.sets)
    fixed["train"] = {**BUDGET, **fixed["train"], "loss": a.loss, "seed": a.seed}
    budget = {k: fixed["train"][k] for k in BUDGET}
    command = "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info()
    commit = git_commit()  # the code this process runs: taken at start, not when a result is written
    header = {"data": a.data, "selection": "best validation NDCG@10 (test never looked at)",
              "space": {f"{t}.{k}": v for (t, k), v in SPACE.items()},
              "kind_space": {kind: {f"{t}.{k}": v for (t, k), v in sp.items()} for kind, sp in KIND_SPACE.items()}}
    if a.seeds_per_trial < 1:
        raise SystemExit(f"--seeds-per-trial must be >= 1, got {a.seeds_per_trial}")
    seeds = [a.seed + i for i in range(a.seeds_per_trial)]
    draws = {kind: draw_trials(a.trials, a.seed, kind) for kind in kinds}
    tasks = [(t, kind) for t in range(a.trials) for kind in kinds]
    for n, (t, kind) in enumerate(tasks):
        if n % wn != wi:
            continue
        params = draws[kind][t]
        done = _read(out)
        if any(same_trial(r, kind, a.loss, t, params, budget, seeds) for r in done.get("trials", [])):
            continue
        t0 = time.perf_counter()
        ms = []
        for seed in seeds:  # paired: seed s of every trial and kind starts from the same backbone
            run_dir = runs / run_name(kind, a.loss, t, seed, a.seed)
            over = merged(fixed, params, {"train": {"seed": seed}, "data": {"source": a.data}})
            train_or_resume(load_run_config(BASE / f"{kind}.toml", over), run_dir, carried=carried)
            ms.append(load_checkpoint(run_dir).metrics)
        per_seed = [m["best_valid_ndcg@10"] for m in ms]
        row = {"kind": kind, "loss": a.loss, "trial": t, "params": params, "budget": budget,
               "valid_ndcg@10": float(np.mean(per_seed)), "best_epoch": ms[0]["best_epoch"],
               "epochs_run": ms[0].get("epochs_run"), "stopped_by": ms[0].get("stopped_by"),
               "seconds": sum(m["train_seconds"] for m in ms), "wall_seconds_this_session": time.perf_counter() - t0,
               "seed": a.seed, "command": command, "machine": machine["cpu"], "commit": commit}
        if len(seeds) > 1:  # rows of one seed keep the original schema
            row.update(seeds=seeds, valid_per_seed=per_seed, best_epochs=[m["best_epoch"] for m in ms],
                       epochs_run_per_seed=[m.get("epochs_run") for m in ms])

        def add(doc: dict, row=row) -> None:
            doc.update(header)
            # a trial scored on more seeds replaces its earlier row: one row per trial is ranked
            doc["trials"] = [r for r in doc.get("trials", [])
                             if not same_trial(r, row["kind"], row["loss"], row["trial"], row["params"], row["budget"],
                                               trial_seeds(r))]
            doc["trials"].append(row)
            select(doc, Path(out + "_selected"))

        update_results(out + ".json", add, render)
    return _read(out)


def _read(out: str) -> dict:
    """The search's results file (`out` without suffix), or {} before its first trial."""
    path = Path(out + ".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def run_name(kind: str, loss: str, trial: int, seed: int = 0, first: int = 0) -> str:
    """A trial's run folder; seeds after the search's first get a suffix (one-seed searches keep
    the names their runs have)."""
    return f"{kind}_{loss}_trial{trial}" + (f"_seed{seed}" if seed != first else "")


def select(doc: dict, folder: Path) -> None:
    """Per kind and loss, the trial with the best validation NDCG@10, as params and TOML;
    the trial counts per kind are shown beside it so an unequal count is visible."""
    groups: dict[str, list[dict]] = {}
    for r in doc["trials"]:
        groups.setdefault(r["kind"] if r["loss"] == "full" else f"{r['kind']}_{r['loss']}", []).append(r)
    # Equal trials: a kind is selected among the trial numbers every kind of its loss has
    # finished, so a search cut short mid-round does not give one kind an extra draw.
    finished: dict[str, set[int]] = {}
    for loss in {r["loss"] for r in doc["trials"]}:
        per_kind: dict[str, set[int]] = {}
        for r in doc["trials"]:
            if r["loss"] == loss:
                per_kind.setdefault(r["kind"], set()).add(r["trial"])
        finished[loss] = set.intersection(*per_kind.values())
    doc["selected"], doc["trial_counts"] = {}, {}
    for name, rows in sorted(groups.items()):
        rows = [r for r in rows if r["trial"] in finished[r["loss"]]]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["valid_ndcg@10"])
        doc["selected"][name] = best["params"]
        doc["trial_counts"][name] = len(rows)
        over = merged({"train": {**best["budget"], "loss": best["loss"]}}, best["params"])
        write_text_atomic(folder / f"{name}.toml", to_toml(best["kind"], over, f"search winner, trial {best['trial']} of "
                                                            f"{len(rows)} (valid NDCG@10 {best['valid_ndcg@10']:.4f})"))


def render(doc: dict) -> str:
    lines = [f"# Equal-budget search on {doc['data']}", "",
             f"Selection: {doc['selection']}. Every kind: the same trials of the shared knobs, the same budget "
             "(patience / epoch cap / wall-time cap) and training seeds (a trial of several seeds is ranked on their "
             "mean; best epoch / run are its first seed's).", "",
             "| kind | loss | trial | params | budget | seeds | valid NDCG@10 | best epoch / run | stopped by | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    selected = doc.get("selected", {})
    for r in sorted(doc.get("trials", []), key=lambda r: (r["loss"], r["kind"], r["trial"])):
        name = r["kind"] if r["loss"] == "full" else f"{r['kind']}_{r['loss']}"
        knobs = ", ".join(f"{k}={v}" for tab in r["params"].values() for k, v in tab.items()) or "starting point"
        star = " **(selected)**" if selected.get(name) == r["params"] else ""
        b = r["budget"]
        lines.append(f"| {r['kind']} | {r['loss']} | {r['trial']}{star} | {knobs} | "
                     f"{b['patience']} / {b['epochs']} / {b['max_minutes'] or 'none'} | "
                     f"{', '.join(map(str, trial_seeds(r)))} | {r['valid_ndcg@10']:.4f} | "
                     f"{r['best_epoch']} / {r.get('epochs_run')} | {r.get('stopped_by')} | {r['seconds']:.0f} |")
    done: dict[str, int] = {}
    for r in doc.get("trials", []):
        name = r["kind"] if r["loss"] == "full" else f"{r['kind']}_{r['loss']}"
        done[name] = done.get(name, 0) + 1
    counted = ", ".join(f"{k} {v}" for k, v in doc.get("trial_counts", {}).items()) or "none yet"
    lines += paired(doc)
    lines += ["", "Finished trials per kind: " + ", ".join(f"{k} {v}" for k, v in sorted(done.items())) + ".",
              f"Selected among the trial numbers every kind of a loss has finished (equal counts): {counted}.", "",
              "Commands, machines, commits:", ""]
    seen = set()
    for r in doc.get("trials", []):
        key = (r["command"], r["machine"], r["commit"])
        if key not in seen:
            seen.add(key)
            lines.append(f"- `{r['command']}` on {r['machine']}, seed {r['seed']}, commit {r['commit']}")
    return "\n".join(lines) + "\n"


def paired(doc: dict) -> list[str]:
    """Per loss, each trial's validation NDCG@10 side by side: trial t shares its backbone and training
    knobs across kinds, so a row is a paired comparison; each generative kind's wins over softmax and
    its mean difference over the trials both finished."""
    out = []
    for loss in sorted({r["loss"] for r in doc.get("trials", [])}):
        got: dict[int, dict[str, float]] = {}
        for r in doc["trials"]:
            if r["loss"] == loss:
                got.setdefault(r["trial"], {})[r["kind"]] = r["valid_ndcg@10"]
        kinds = [k for k in KIND_SPACE if any(k in row for row in got.values())]
        out += ["", f"Paired by trial ({loss}): validation NDCG@10 of each kind on the same shared knobs.", "",
                "| trial | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for t in sorted(got):
            out.append(f"| {t} | " + " | ".join(f"{got[t][k]:.4f}" if k in got[t] else "" for k in kinds) + " |")
        for k in kinds:
            both = [t for t in got if k in got[t] and "softmax" in got[t]]
            if k == "softmax" or not both:
                continue
            d = [got[t][k] - got[t]["softmax"] for t in both]
            out.append(f"\n{k} against softmax: ahead in {sum(x > 0 for x in d)} of {len(d)} paired trials, "
                       f"mean difference {np.mean(d):+.4f}.")
    return out


if __name__ == "__main__":
    main()
