"""Accuracy of trained configurations: several training seeds, deterministic and
stochastic serving, S averaged samples, and the diffusion step sweep.

    python -m benchmarks.accuracy                                  # softmax, vae, diffusion on ML-100K
    python -m benchmarks.accuracy --data ml-1m --configs softmax --seeds 0 --set train.epochs=30
    python -m benchmarks.accuracy --configs vae_free=runs/cfg/vae_free.toml   # any TOML, own key

    python -m benchmarks.accuracy --configs softmax,vae --set train.loss=bce   # the paper's protocol

A configuration is NAME (genattn/configs/NAME.toml) or NAME=PATH; its key in the results
file is NAME_LOSS (e.g. vae_bce). Trained checkpoints are kept under
--runs/<dataset>/<key>_seed<s>: a finished run is reused and an interrupted one resumed,
and a run folder holding another configuration is refused; a seed the results file already
records with the same configuration is not retrained when its run folder is absent (a fresh
checkout). Each entry keeps a record per
training seed (metrics, best epoch, epochs run, stop reason, validation curve, commit),
so running one more seed later merges into it. Before a session ends, `--park` copies the
unfinished runs to benchmarks/results/accuracy_<dataset>_inflight/ (to commit): a fresh checkout
resumes them from there. Results:
benchmarks/results/accuracy_<dataset>.{json,md}; entries other invocations wrote are kept.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from genattn.checkpoint import load_checkpoint, read_config, saved_run_config
from genattn.config import ConfigError, load_run_config, parse_overrides, shared_draws
from genattn.data import leave_one_out, load_source
from genattn.evaluation import eval_sets, evaluate
from genattn.fileio import write_json_atomic
from genattn.metrics import mean_std
from genattn.models import default_sampling, stochastic_sampling
from genattn.training import train

from . import users
from .inflight import ORIGIN, drop, park, unpark
from .machine import REPO, git_commit, machine_info, repo_path, results_stem
from .record import update_results

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "genattn" / "configs"
# The kinds' shared defaults before they followed the search: what the search, the diagnostics and
# the cost table start from, so their results stay what they describe.
EARLIER_DEFAULTS = ROOT / "benchmarks" / "configs" / "earlier_defaults"
SHOWN = ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10", "ild@10", "cc@10", "novelty@10"]
SAMPLES = (1, 4, 16)
log = logging.getLogger("benchmarks.accuracy")


def parse_sets(items: list[str]) -> dict[str, dict]:
    """--set table.key=value (genattn.config.parse_overrides); a malformed one ends the run."""
    try:
        return parse_overrides(items)
    except ConfigError as e:
        raise SystemExit(f"--set: {e}") from e


def merged(base: dict[str, dict], *more: dict[str, dict]) -> dict[str, dict]:
    """Override tables (model / train / data) layered left to right; the inputs stay unchanged."""
    out = {k: dict(v) for k, v in base.items()}
    for m in more:
        for table, vals in m.items():
            out.setdefault(table, {}).update(vals)
    return out


def resolve(spec: str) -> tuple[str, Path]:
    name, _, path = spec.partition("=")
    p = Path(path) if path else CONFIGS / f"{name}.toml"
    if not p.is_file():
        raise SystemExit(f"configuration {name!r}: no such file {p}")
    return name, p


def origin_path(out: Path) -> Path:
    """Beside the run folder, not in it: a checkpoint save replaces the folder whole."""
    return out.with_name(out.name + ORIGIN)


def origin(out: Path) -> dict | None:
    """Who trained the checkpoint in `out`: the command, commit and machine that started it
    (a run reused from another benchmark, e.g. a search trial copied as seed 0, keeps its own)."""
    p = origin_path(out)
    return json.loads(p.read_text()) if p.is_file() else None


def train_or_resume(run, out: Path, started_by: dict | None = None, carried: Path | None = None) -> Path:
    """Train `run` into `out`; a finished run is reused, an interrupted one resumed from
    its last epoch, so a benchmark can span sessions. `started_by` (command, commit, machine)
    is written to `origin_path(out)` when the training starts fresh. `carried`: where `--park` keeps
    unfinished runs for a fresh checkout (benchmarks/inflight.py); a run with no folder of its own
    starts from its parked copy, whose copy is dropped once the run has finished."""
    if carried is not None:
        unpark(carried, out)
    _train_or_resume(run, out, started_by)
    if carried is not None:
        drop(carried, out)
    return out


def _train_or_resume(run, out: Path, started_by: dict | None) -> None:
    metrics = out / "metrics.json"
    if (out / "config.json").is_file():
        have = read_config(out)  # the checkpoint's own reader: fields added since are filled as trained
        want = replace(run, model=replace(run.model, n_items=have.model.n_items))
        if not same_config(asdict(have), asdict(want)) or have.data.source != run.data.source:
            raise SystemExit(f"{out} holds a run of another configuration; remove it or pass another --runs")
    if metrics.is_file() and "test" in json.loads(metrics.read_text()):
        return
    resume = (out / "state.json").is_file()
    if resume:
        log.info("resuming %s", out)
    elif started_by is not None:
        write_json_atomic(origin_path(out), started_by)
    train(run, out, resume=resume, progress=sys.stderr.isatty())


def seed_run(cfg_path: Path | None, seed: int, data: str, sets: dict):
    """The RunConfig of one configuration and training seed."""
    return load_run_config(cfg_path, merged(sets, {"train": {"seed": seed}, "data": {"source": data}}))


def recorded(path: Path, key: str, seed: int, run) -> dict | None:
    """The results entry `key` when it already holds `seed` trained with `run`'s configuration:
    a fresh checkout has none of the finished run folders, and retraining them would only
    reproduce the record (the seed's own provenance says where it came from)."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    entry = doc.get(key)
    if not (isinstance(entry, dict) and str(seed) in entry.get("per_seed", {})):
        return None
    return entry if trains(entry, run) else None


def trains(entry: dict, run) -> bool:
    """Whether the entry's recorded configuration trains what `run` does, the record read as the
    checkpoint reader reads a config (filling fields added since it was written)."""
    try:
        have = saved_run_config({"model": {**entry["config"]["model"], "n_items": run.model.n_items},
                                 "train": entry["config"]["train"]})
    except (ConfigError, TypeError, KeyError):
        return False
    return same_config(asdict(have), asdict(run))


def stochastic(kind: str, base):
    """The stochastic setting reported beside each deterministic one (vae: a prior sample;
    diffusion: noise start and eta 1, full DDIM noise). The collapse and frontier
    benchmarks use the same one."""
    return stochastic_sampling(kind, base, **({} if kind == "vae" else {"eta": 1.0}))


def seed_record(ck, seed: int, split_sets: dict, ds, sample_seeds: list[int], steps: list[int]) -> dict:
    """Everything one training seed contributes to an entry: final metrics, how training went
    (best epoch, epochs run, why it stopped, the validation curve), stochastic modes and sweeps."""
    m = ck.metrics
    hist = [h for h in m["history"] if "valid_ndcg@10" in h]
    rec = {"seed": seed, "valid": m["valid"], "test": m["test"], "seconds": m["train_seconds"],
           "best_epoch": m["best_epoch"], "epochs_run": m.get("epochs_run", len(m["history"])),
           "stopped_by": m.get("stopped_by"),
           "valid_curve": {"epoch": [h["epoch"] for h in hist], "ndcg@10": [h["valid_ndcg@10"] for h in hist],
                           "coverage@10": [h.get("valid_coverage@10") for h in hist]}}
    kind = ck.run.model.attention
    base = default_sampling(ck.run.model)
    kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres)
    rec[RANKS] = user_ranks(ck, base, split_sets, kw)
    rec[TRAIN_CURVE] = train_curve(m["history"])
    if base is None:
        return rec
    st = stochastic(kind, base)
    for split in ("valid", "test"):
        rs = [evaluate(ck.model, split_sets[split], sampling=st, seed=s, **kw) for s in sample_seeds]
        rec[f"stoch_{split}"] = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
    sweeps = {}
    for S in SAMPLES:
        sweeps[f"samples_{S}"] = evaluate(ck.model, split_sets["test"], sampling=replace(st, n_samples=S), seed=0, **kw)
    if kind == "diffusion":
        for n in steps:
            sweeps[f"steps_{n}"] = evaluate(ck.model, split_sets["test"], sampling=replace(base, n_steps=n), **kw)
            sweeps[f"steps_{n}_stochastic"] = evaluate(ck.model, split_sets["test"],
                                                        sampling=replace(st, n_steps=n), seed=0, **kw)
    rec.update(sweeps=sweeps, deterministic_sampling=base.__dict__, stochastic_sampling=st.__dict__,
               sample_seeds=sample_seeds)
    return rec


RANKS = "ranks@10"  # a seed record's per-user top-10 ranks, deterministic serving (benchmarks/users.py)
TRAIN_CURVE = "train_curve"  # per epoch, the objective's terms on the training windows


def train_curve(history: list[dict]) -> dict[str, list]:
    """The objective's terms per epoch as training logged them: `ce` (the served path's CE) and, for
    the generative kinds, `ce_posterior` (the path that sees the target) and `bound` (KL / diffusion
    bound). Where they part is where the two paths stop learning the same thing."""
    terms = [t for t in ("ce", "ce_posterior", "bound") if history and all(t in h for h in history)]
    return {"epoch": [h["epoch"] for h in history], **{t: [h[t] for h in history] for t in terms}}


def user_ranks(ck, base, split_sets: dict, kw: dict) -> dict[str, str]:
    """Each split's per-user target ranks under the deterministic serving, encoded; checked
    against the metrics the checkpoint recorded, which the same evaluation produced."""
    out = {}
    for split in ("valid", "test"):
        got: list = []
        evaluate(ck.model, split_sets[split], sampling=base, ranks_into=got, **kw)
        out[split] = users.encode(got[0])
        want = ck.metrics.get(split, {}).get("ndcg@10")
        have = float(users.ndcg(out[split]).mean())
        if want is not None and abs(have - want) > 1e-5:
            log.warning("%s: re-evaluated %s NDCG@10 %.5f differs from the recorded %.5f", ck.path, split, have, want)
    return out


# Settings that do not change what is trained: runs that differ only here are seeds of one entry.
NOT_CONFIG = {"seed", "threads", "device"}


def same_config(a: dict, b: dict) -> bool:
    return _what_trains(a) == _what_trains(b)


def _what_trains(c: dict) -> dict:
    train = {k: v for k, v in c["train"].items() if k not in NOT_CONFIG}
    # None where the option changes nothing; a record from before it drew per term.
    train["share_negatives"] = shared_draws(c["model"].get("attention"), c["train"])
    return {"model": c["model"], "train": train}


def aggregate(entry: dict) -> dict:
    """The entry's summary fields, recomputed from its per-seed records (so running one
    more seed later merges into the entry)."""
    recs = [entry["per_seed"][k] for k in sorted(entry["per_seed"], key=int)]
    entry.update(seeds=[r["seed"] for r in recs], valid=mean_std([r["valid"] for r in recs]),
                 test=mean_std([r["test"] for r in recs]), per_seed_test=[r["test"] for r in recs],
                 train_seconds=mean_std([{"s": r["seconds"]} for r in recs])["s"],
                 best_epochs=[r["best_epoch"] for r in recs], epochs_run=[r["epochs_run"] for r in recs],
                 stopped_by=[r["stopped_by"] for r in recs], valid_curves=[r["valid_curve"] for r in recs],
                 epochs=[r["epochs_run"] for r in recs])
    if all("stoch_test" in r for r in recs):
        entry["deterministic_sampling"] = recs[0]["deterministic_sampling"]
        entry["stochastic"] = {"sampling": recs[0]["stochastic_sampling"], "sample_seeds": recs[0]["sample_seeds"],
                               "valid": mean_std([r["stoch_valid"] for r in recs]),
                               "test": mean_std([r["stoch_test"] for r in recs])}
        knobs = [k for k in recs[0]["sweeps"] if all(k in r["sweeps"] for r in recs)]
        entry["sweeps_test"] = {k: mean_std([r["sweeps"][k] for r in recs]) for k in knobs}
    return entry


def entry_config(ck, cfg_path: Path | None, sets: dict) -> dict:
    """The `config` an entry records for a trained checkpoint."""
    model_cfg = asdict(ck.run.model)
    model_cfg.pop("n_items", None)
    return {"attention": ck.run.model.attention, "file": repo_path(cfg_path) if cfg_path else None,
            "overrides": sets, "model": model_cfg, "train": asdict(ck.run.train)}


def backfill(path: Path, runs: Path, ds, split_sets: dict) -> dict:
    """Give every recorded seed what newer records keep (per-user ranks, the training curve) from
    its run folder, when that is here and holds the entry's configuration (the folder's own metrics
    must agree with the re-evaluation: `user_ranks`). Trains nothing; nothing else changes."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    found: dict[tuple[str, str], dict] = {}
    for key in entries(doc):
        for seed, rec in doc[key].get("per_seed", {}).items():
            run_dir = runs / f"{key}_seed{seed}"
            if (RANKS in rec and TRAIN_CURVE in rec) or not (run_dir / "model.safetensors").is_file():
                continue
            ck = load_checkpoint(run_dir)
            if not trains(doc[key], ck.run):
                log.warning("%s: holds another configuration than the entry %s; skipped", run_dir, key)
                continue
            kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres)
            found[(key, seed)] = {RANKS: rec.get(RANKS) or user_ranks(ck, default_sampling(ck.run.model),
                                                                      split_sets, kw),
                                  TRAIN_CURVE: train_curve(ck.metrics["history"])}
            log.info("%s seed %s: ranks and training curve added", key, seed)

    def add(d: dict) -> None:
        for (key, seed), more in found.items():
            d[key]["per_seed"][seed].update(more)

    return update_results(path, add, render) if found else doc


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
    ap.add_argument("--park", action="store_true",
                    help="copy the unfinished runs' checkpoints to <out>_inflight/ (to commit) and exit; a "
                         "fresh checkout resumes them from there")
    ap.add_argument("--backfill", action="store_true",
                    help="train nothing: give the recorded seeds whose run folders are here what newer records "
                         "keep (per-user top-10 ranks, which the verdict's bootstrap over users reads; the "
                         "training curve)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = [resolve(s) for s in a.configs.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    sample_seeds = [int(s) for s in a.sample_seeds.split(",")]
    steps = [int(s) for s in a.steps.split(",")]
    sets = parse_sets(a.sets)
    out = a.out or results_stem("accuracy", a.data)
    runs = Path(a.runs) / a.data
    carried = Path(out + "_inflight")
    if a.park:
        parked = park(runs, carried, set(), "*_seed*")
        print(f"parked {len(parked)} unfinished run(s) in {carried}: {', '.join(parked) or 'none'}")
        return {}

    ds = load_source(load_run_config(None, {"data": {**sets["data"], "source": a.data}}).data)
    split_sets = eval_sets(leave_one_out(ds))
    if a.backfill:
        return backfill(Path(out + ".json"), runs, ds, split_sets)
    command = "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info()
    commit = git_commit()  # the code this process runs: taken at start, not when a result is written
    result: dict = {"data": a.data, "n_users": ds.n_users, "n_items": ds.n_items,
                    "protocol": "leave-one-out, full ranking over the whole catalog, history items masked"}
    for name, cfg_path in specs:
        loss = load_run_config(cfg_path, {t: dict(v) for t, v in sets.items()}).train.loss
        key = f"{name}_{loss}"  # kind (or configuration) and training loss
        for seed in seeds:
            me = {"command": command, "commit": commit, "machine": machine["cpu"]}
            run = seed_run(cfg_path, seed, a.data, sets)
            run_dir = runs / f"{key}_seed{seed}"
            done = None if (run_dir / "config.json").is_file() else recorded(Path(out + ".json"), key, seed, run)
            if done is not None:
                log.info("%s seed %d: recorded in %s.json with this configuration; not retrained (remove the "
                         "seed's record to redo it)", key, seed, out)
                result[key] = done
                continue
            train_or_resume(run, run_dir, started_by=me, carried=carried)
            ck = load_checkpoint(run_dir)
            config = entry_config(ck, cfg_path, sets)
            rec = seed_record(ck, seed, split_sets, ds, sample_seeds, steps)
            # The training's own provenance when known (older run folders have none: the reader's).
            rec.update(origin(run_dir) or me, evaluated_by=me)
            # Merged into what is on disk under a lock: two benchmarks running at once keep each
            # other's entries, and a seed run later joins its entry when the configuration matches.
            def add(doc: dict) -> None:
                doc.update(result, machine=machine)
                old = doc.get(key)
                entry = old if (isinstance(old, dict) and "per_seed" in old
                                and same_config(old["config"], config)) else {"per_seed": {}}
                if entry is not old and old is not None:
                    log.warning("%s: the configuration changed; the earlier entry is replaced", key)
                entry.update(config=config, command=command, machine=machine["cpu"])
                entry["per_seed"][str(seed)] = rec
                doc[key] = aggregate(entry)

            result[key] = update_results(out + ".json", add, render)[key]
    return result


def fmt(ms: dict | None, n: int = 2) -> str:
    """mean ± std over training seeds; one seed has no std to show; – where not measured."""
    if ms is None:
        return "–"
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
            lines.append(f"| {key} | {kind} | {det} | " + " | ".join(fmt(e[split].get(m), n) for m in SHOWN) + " |")
            if "stochastic" in e:
                s = e["stochastic"]
                lines.append(f"| {key} | {kind} | {_samp(s['sampling'], kind)}, {len(s['sample_seeds'])} sampling "
                             f"seeds† | " + " | ".join(fmt(s[split].get(m), n) for m in SHOWN) + " |")
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
    rows = verdict(r, searched_max_len(r["data"]))
    if rows:
        lines += ["## Does generated attention beat softmax? (test NDCG@10, selected on validation)", "",
                  "Per loss and budget (patience / epoch cap, and max_len where no search selected it: entries "
                  "of one budget are compared only with each other): the softmax entry and the generative entry "
                  "with the best mean validation NDCG@10; the target is a test gain of more than twice the larger seed std. Under bce / sampled, generative "
                  "entries whose two CE terms drew their own negatives (before `share_negatives`: two negatives "
                  "per position to softmax's one) are left out. The seed std is training noise only; the last "
                  "column is the other uncertainty, which users the split holds: the gain's 95% interval from a "
                  "paired bootstrap over users (each user's NDCG@10 averaged over the seeds both entries share; "
                  "benchmarks/users.py).", "",
                  "| loss | patience / cap | softmax (valid → test) | best generative (valid → test) | gain | "
                  "2 × larger std | beats | gain's 95% interval over users |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in rows:
            length = f", max_len {v['max_len']}" if v["max_len"] is not None else ""
            lines.append(f"| {v['loss']} | {v['patience']} / {v['epochs']}{length} | "
                         f"{v['softmax']}: {v['softmax_valid']:.4f} → {v['softmax_test']:.4f} | "
                         f"{v['generative']}: {v['generative_valid']:.4f} → {v['generative_test']:.4f} | "
                         f"{v['gain']:+.4f} | {_margin(v)} | {_beats(v)} | "
                         f"{_interval(v['users_ci'])} |")
        lines.append("")
    pairs = protocols(r)
    if any(set(v) & {"full", "bce"} for v in pairs.values()):
        lines += ["## Both protocols side by side (test, deterministic serving)", "",
                  "Full CE (ours) and BCE with one uniform negative per position (the original SASRec loss, the "
                  "paper's line of work); the same configuration and seeds under each.", "",
                  "| configuration | kind | full CE NDCG@10 | full CE HR@10 | BCE NDCG@10 | BCE HR@10 |",
                  "|---|---|---|---|---|---|"]
        for base, by_loss in pairs.items():
            cells = []
            for loss in ("full", "bce"):
                e = r.get(by_loss.get(loss, ""))
                n = len(e.get("seeds", [0, 1])) if e else 0
                cells += [fmt(e["test"].get(m), n) if e else "–" for m in ("ndcg@10", "hr@10")]
            kind = r[next(iter(by_loss.values()))]["config"]["attention"]
            lines.append(f"| {base} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Training budget, convergence and commands", "",
              "Per training seed: the epoch of the best validation NDCG@10 (the weights reported), the epochs run "
              "and why the run stopped (patience, the epoch cap, or the wall-time cap).", "",
              "| configuration | loss | patience / epoch cap / wall-time cap (min) | best epoch | epochs run | "
              "stopped by | wall time per run (s) | commit | trained on | command |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in entries(r):
        e = r[key]
        tr = e["config"].get("train", {}) if isinstance(e["config"], dict) else {}
        ts = e["train_seconds"]
        wall = f"{ts['mean']:.0f}" if len(e.get("seeds", [0, 1])) < 2 else f"{ts['mean']:.0f} ± {ts['std']:.0f}"
        budget = f"{tr.get('patience', '?')} / {tr.get('epochs', '?')} / {tr.get('max_minutes') or 'none'}"
        seeds = e.get("per_seed", {}).values()
        commits = sorted({str(p.get("commit")) for p in seeds}) or ["?"]
        # The training's machine (a seed's record keeps its training's provenance: a GPU run evaluated here).
        machines = sorted({str(p.get("machine")) for p in seeds if p.get("machine")}) or ["?"]
        lines.append(f"| {key} | {tr.get('loss', 'full')} | {budget} | {e.get('best_epochs', '?')} | "
                     f"{e.get('epochs_run', e['epochs'])} | {e.get('stopped_by', '?')} | {wall} | "
                     f"{', '.join(commits)} | {'; '.join(machines)} | `{e.get('command', r.get('command'))}` |")
    notes = [f"- {key}: {r[key]['note']}" for key in entries(r) if r[key].get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def protocols(r: dict) -> dict[str, dict[str, str]]:
    """{configuration: {loss: entry key}}: an entry's key is its configuration's name and its loss."""
    out: dict[str, dict[str, str]] = {}
    for key in entries(r):
        cfg = r[key].get("config")
        if not isinstance(cfg, dict):
            continue
        loss = cfg.get("train", {}).get("loss", "full")
        base = key[: -len(loss) - 1] if key.endswith(f"_{loss}") else key
        out.setdefault(base, {})[loss] = key
    return out


def per_term_negatives(e: dict) -> bool:
    """A generative entry trained with a sampled loss (bce, sampled) before its CE terms shared
    one draw of negatives (a record without `share_negatives` predates the option)."""
    return shared_draws(e["config"].get("attention"), e["config"].get("train", {})) is False


def searched_max_len(data: str) -> bool:
    """Whether this dataset's equal-budget search selected the sequence length (ML-100K's did);
    where none did (ML-1M), max_len is part of the protocol, like the loss."""
    f = REPO / f"{results_stem('search', data)}.json"
    if not f.exists():
        return False
    return "model.max_len" in json.loads(f.read_text()).get("space", {})


def verdict(r: dict, max_len_selected: bool = True) -> list[dict]:
    """The issue's test, per training loss and budget, from the new-format entries (several seeds
    each): the generative entry selected on validation against the best softmax entry on
    validation. Entries trained under another budget (patience, epoch cap) are compared only with
    each other: every kind gets the same budget. So are entries of another sequence length
    unless `max_len_selected` (a searched knob competes; a protocol setting such as ML-1M's
    proxy max_len 50 against the anchors' 200 does not). Under a sampled loss a generative entry
    whose CE terms drew their own negatives (`per_term_negatives`) is left out: it learned from
    two negatives per position to softmax's one.

    A budget where either kind has no entry of two or more seeds still gets a row, from its
    one-seed entries: `margin` is None there (no seed std to test against), `beats` is False when
    the gain is not positive (no margin can make it a win) and None otherwise, and the users'
    interval is the only uncertainty it can show."""
    rows = []
    by_budget: dict[tuple, list[str]] = {}
    for key in entries(r):
        e = r[key]
        if "per_seed" in e and e.get("seeds") and not per_term_negatives(e):
            tr = e["config"]["train"]
            length = None if max_len_selected else e["config"].get("model", {}).get("max_len")
            by_budget.setdefault((tr.get("loss", "full"), tr.get("patience"), tr.get("epochs"), length),
                                 []).append(key)
    is_soft = lambda k: r[k]["config"]["attention"] == "softmax"  # noqa: E731
    pick = lambda ks: max(ks, key=lambda k: r[k]["valid"]["ndcg@10"]["mean"]) if ks else None  # noqa: E731
    for (loss, patience, epochs, length), keys in sorted(by_budget.items(), key=lambda kv: tuple(map(str, kv[0]))):
        seeded = [k for k in keys if len(r[k]["seeds"]) > 1]
        one_seed = {is_soft(k) for k in seeded} != {True, False}  # not both kinds with several seeds
        pool = keys if one_seed else seeded
        soft = pick([k for k in pool if is_soft(k)])
        gen = pick([k for k in pool if not is_soft(k)])
        if soft is None or gen is None:
            continue
        st, gt = r[soft]["test"]["ndcg@10"], r[gen]["test"]["ndcg@10"]
        gain = gt["mean"] - st["mean"]
        margin = None if one_seed else 2 * max(st["std"], gt["std"])
        ci = over_users(r[soft], r[gen])
        rows.append({"users_ci": ci, "loss": loss, "patience": patience, "epochs": epochs, "max_len": length,
                     "softmax": soft, "generative": gen,
                     "softmax_valid": r[soft]["valid"]["ndcg@10"]["mean"], "softmax_test": st["mean"],
                     "generative_valid": r[gen]["valid"]["ndcg@10"]["mean"], "generative_test": gt["mean"],
                     "gain": gain, "margin": margin,
                     "beats": (gain > margin) if margin is not None else (None if gain > 0 else False)})
    return rows


def _margin(v: dict) -> str:
    return "– (one seed)" if v["margin"] is None else f"{v['margin']:.4f}"


def _beats(v: dict) -> str:
    if v["beats"] is None:  # one seed, a positive gain: the users' interval is all there is to read
        return "undecided (one seed: no std)"
    return ("yes" if v["beats"] else "no") + (" (one seed)" if v["margin"] is None else "")


def _interval(ci: dict | None) -> str:
    if ci is None:
        return "– (no per-user ranks recorded)"
    return f"[{ci['lo']:+.4f}, {ci['hi']:+.4f}] ({ci['users']} users, {ci['seeds']} seed{'s' if ci['seeds'] != 1 else ''})"


def over_users(a: dict, b: dict, split: str = "test") -> dict | None:
    """The paired bootstrap over users of entry b − entry a (NDCG@10), on the training seeds both
    record ranks for; None where they share none."""
    both = [k for k in a.get("per_seed", {}) if RANKS in a["per_seed"][k] and RANKS in b.get("per_seed", {}).get(k, {})]
    if not both:
        return None
    return users.paired_ci([a["per_seed"][k][RANKS][split] for k in both],
                           [b["per_seed"][k][RANKS][split] for k in both])


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
