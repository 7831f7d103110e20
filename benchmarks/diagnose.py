"""Why does generated attention lose? Cheap diagnostics before any search.

    python -m benchmarks.diagnose --variants softmax,vae            # one process: these, in turn
    python -m benchmarks.diagnose --variants diffusion,vae_no_train_noise --set train.threads=1

Every variant trains for the same fixed number of epochs (no early stop, no wall-time
cap), logging validation NDCG@10 and coverage@10 at every epoch; the test split is
read once, on the best-validation weights, as a diagnostic. Then, on each checkpoint,
the last block's attention weights are replaced by

    softmax   A = softmax(S + M)             (what the generator is supposed to improve)
    uniform   A = 1/|allowed| over the history (no content at all)
    newest    A = the query's own position    (the newest item only)

and validation is re-scored: if replacing a generated map by softmax(S) costs nothing,
the network does not use what it generates. Variants (VARIANTS below) isolate the
training noise (VAE with the prior's training draw off, VAE with sigma clamped to <= 1)
and the bound's warm-up (diffusion with a 10x longer one). The variants depart from
the defaults the kinds had when this ran (benchmarks/configs/earlier_defaults/: the VAE
drew its prior in training then), so they stay the experiments the results describe.
Runs resume when interrupted; results merge into benchmarks/results/diagnose_<data>.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch
from torch import Tensor

from genattn.checkpoint import load_checkpoint
from genattn.config import load_run_config
from genattn.data import leave_one_out, load_source
from genattn.evaluation import eval_sets, evaluate
from genattn.models import default_sampling
from genattn.models.attention import AttentionWeights, AttnInputs, masked_softmax

from .accuracy import EARLIER_DEFAULTS, merged, parse_sets, short_name, train_or_resume
from .machine import git_commit, machine_info, repo_path
from .record import update_results

log = logging.getLogger("benchmarks.diagnose")

# name -> (kind's config file, overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "softmax": ("softmax", {}),
    "vae": ("vae", {}),
    "diffusion": ("diffusion", {}),
    "vae_no_train_noise": ("vae", {"model": {"train_prior_noise": False}}),
    "vae_sigma_le_1": ("vae", {"model": {"logstd_max": 0.0}}),
    "diffusion_warmup_x10": ("diffusion", {"model": {"beta_warmup_steps": 5000}}),
}
ABLATIONS = ("softmax", "uniform", "newest")
CURVE_EPOCHS = (1, 5, 10, 20, 30, 40, 50, 60, 80, 100)


class FixedWeights(AttentionWeights):
    """A stand-in for a block's attention weights that ignores what the block learned."""

    def __init__(self, mode: str):
        super().__init__()
        self.kind, self.mode = "softmax", mode  # "softmax" kind: the serving path treats it as deterministic

    def forward(self, x: AttnInputs) -> tuple[Tensor, Tensor]:
        if self.mode == "softmax":
            z = x.s
        elif self.mode == "uniform":
            z = torch.zeros_like(x.s)
        else:  # newest: the query's own position (rel == 0 on an allowed key is the diagonal)
            z = torch.where(x.rel == 0, 0.0, -1e4).expand_as(x.s)
        return masked_softmax(z, x.allowed), x.s.new_zeros(())


@contextlib.contextmanager
def last_block_weights(model, mode: str):
    attn = model.blocks[-1].attn
    saved = attn.weights
    attn.weights = FixedWeights(mode)
    try:
        yield
    finally:
        attn.weights = saved


def run_variant(name: str, data: str, sets: dict, runs: Path, split_sets: dict, ds) -> dict:
    cfg_name, over = VARIANTS[name]
    overrides = merged(sets, over, {"data": {"source": data}})
    base = EARLIER_DEFAULTS / f"{cfg_name}.toml"
    run = load_run_config(base, overrides)
    out = train_or_resume(run, runs / name)
    ck = load_checkpoint(out)
    m = ck.metrics
    kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres)
    sampling = default_sampling(ck.run.model)
    ablation = {"as_trained": evaluate(ck.model, split_sets["valid"], sampling=sampling, **kw)}
    for mode in ABLATIONS:
        with last_block_weights(ck.model, mode):
            ablation[mode] = evaluate(ck.model, split_sets["valid"], sampling=None, **kw)
    hist = [h for h in m["history"] if "valid_ndcg@10" in h]
    return {"kind": ck.run.model.attention, "config": repo_path(base), "overrides": overrides,
            "seed": ck.run.train.seed, "best_epoch": m["best_epoch"], "epochs_run": m.get("epochs_run", len(hist)),
            "stopped_by": m.get("stopped_by"), "train_seconds": m["train_seconds"],
            "valid_curve": {"epoch": [h["epoch"] for h in hist],
                            "ndcg@10": [h["valid_ndcg@10"] for h in hist],
                            "coverage@10": [h.get("valid_coverage@10") for h in hist]},
            "best_valid": m["valid"], "test_once": m["test"],
            "ablation_valid": {k: {"ndcg@10": v["ndcg@10"], "hr@10": v["hr@10"], "coverage@10": v["coverage@10"]}
                               for k, v in ablation.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=60, help="fixed epochs for every variant (no early stop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE")
    ap.add_argument("--runs", default="runs/diagnose")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    sets = parse_sets(a.sets)
    # One budget for every variant: a fixed epoch count, patience that cannot bite, no clock.
    sets["train"].update(epochs=a.epochs, patience=a.epochs, max_minutes=0.0, seed=a.seed)
    out = a.out or f"benchmarks/results/diagnose_{short_name(a.data)}"
    runs = Path(a.runs) / a.data
    ds = load_source(load_run_config(None, {"data": {**sets["data"], "source": a.data}}).data)
    split_sets = eval_sets(leave_one_out(ds))
    commit = git_commit()  # the code this process runs: taken at start, not when a result is written
    command = "python -m benchmarks.diagnose " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in names:
        entry = run_variant(name, a.data, sets, runs, split_sets, ds)
        entry.update(command=command, machine=machine_info()["cpu"], commit=commit)
        doc = update_results(out + ".json", lambda d: (d.setdefault("data", a.data),
                                                       d.setdefault("variants", {}).__setitem__(name, entry)), render)
    return doc


def render(doc: dict) -> str:
    vs = doc["variants"]
    lines = [f"# Diagnostics on {doc['data']}: fixed epochs, per-epoch validation, attention ablations", "",
             "Each variant trains for the same fixed epochs (patience = epochs, no wall-time cap), one seed; "
             "selection of the reported weights on validation NDCG@10; test read once.", "",
             "## Best validation and test (best-validation weights)", "",
             "| variant | kind | best epoch / run | valid NDCG@10 | test NDCG@10 | test HR@10 | test coverage@10 |",
             "|---|---|---|---|---|---|---|"]
    for n, e in vs.items():
        t = e["test_once"]
        lines.append(f"| {n} | {e['kind']} | {e['best_epoch']} / {e['epochs_run']} | {e['best_valid']['ndcg@10']:.4f} | "
                     f"{t['ndcg@10']:.4f} | {t['hr@10']:.4f} | {t['coverage@10']:.3f} |")
    for metric in ("ndcg@10", "coverage@10"):
        lines += ["", f"## Validation {metric} by epoch", "",
                  "| variant | " + " | ".join(f"ep {k}" for k in CURVE_EPOCHS) + " |",
                  "|---|" + "---|" * len(CURVE_EPOCHS)]
        for n, e in vs.items():
            c = dict(zip(e["valid_curve"]["epoch"], e["valid_curve"][metric]))
            lines.append(f"| {n} | " + " | ".join("" if c.get(k) is None else f"{c[k]:.4f}" for k in CURVE_EPOCHS) + " |")
    lines += ["", "## Last block's attention replaced (validation NDCG@10 / coverage@10)", "",
              "| variant | as trained | softmax(S) | uniform | newest only |", "|---|---|---|---|---|"]
    for n, e in vs.items():
        ab = e["ablation_valid"]
        lines.append(f"| {n} | " + " | ".join(f"{ab[k]['ndcg@10']:.4f} / {ab[k]['coverage@10']:.3f}"
                                             for k in ("as_trained", *ABLATIONS)) + " |")
    lines += ["", "Commands, machines, commits:", ""]
    lines += [f"- {n}: `{e['command']}` on {e['machine']}, seed {e['seed']}, commit {e['commit']}, "
              f"{e['train_seconds']:.0f} s" for n, e in vs.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
