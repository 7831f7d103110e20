"""Why does generated attention lose? Cheap diagnostics before any search.

    python -m benchmarks.diagnose --variants softmax,vae            # one process: these, in turn
    python -m benchmarks.diagnose --variants diffusion,vae_no_train_noise --set train.threads=1
    python -m benchmarks.diagnose --data ml-1m --checkpoints vae=runs/accuracy/ml-1m/vae_anchor_l50_bce_seed0

Every variant trains for the same fixed number of epochs (no early stop, no wall-time
cap), logging validation NDCG@10 and coverage@10 at every epoch; the test split is
read once, on the best-validation weights, as a diagnostic. Then, on each checkpoint,
the last block's attention weights are replaced by

    softmax   A = softmax(S + M)             (what the generator is supposed to improve)
    uniform   A = 1/|allowed| over the history (no content at all)
    newest    A = the query's own position    (the newest item only)
    recency   A = the model's own mean map by recency, per head (the same for every user:
              what the block generates, without its dependence on the content)

and validation is re-scored: if replacing a generated map by softmax(S) costs nothing,
the network does not use what it generates; if replacing it by its own mean map by recency
costs nothing, what it generates is a positional pattern, not one that depends on the items
(the table of the last block's weights by recency shows which). Variants (VARIANTS below) isolate the
training noise (VAE with the prior's training draw off, VAE with sigma clamped to <= 1)
and the bound's warm-up (diffusion with a 10x longer one). The variants depart from
the defaults the kinds had when this ran (benchmarks/configs/earlier_defaults/: the VAE
drew its prior in training then), so they stay the experiments the results describe.
`--checkpoints` skips the training and ablates runs trained elsewhere (e.g. the accuracy
benchmark's seeds, under its patience budget). Runs resume when interrupted; results merge
into benchmarks/results/diagnose_<data>.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch
from torch import Tensor

from genattn.checkpoint import load_checkpoint, read_config
from genattn.config import load_run_config
from genattn.data import leave_one_out, load_source
from genattn.evaluation import eval_sets, evaluate
from genattn.models import default_sampling
from genattn.models.attention import AttentionWeights, AttnInputs, masked_softmax

from .accuracy import EARLIER_DEFAULTS, merged, origin, parse_sets, train_or_resume
from .machine import git_commit, machine_info, repo_path, results_stem
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
ABLATIONS = ("softmax", "uniform", "newest", "recency")
CURVE_EPOCHS = (1, 5, 10, 20, 30, 40, 50, 60, 80, 100)


class FixedWeights(AttentionWeights):
    """A stand-in for a block's attention weights that ignores what the block learned."""

    def __init__(self, mode: str, kernel: Tensor | None = None):
        super().__init__()
        self.kind, self.mode = "softmax", mode  # "softmax" kind: the serving path treats it as deterministic
        self.kernel = kernel  # recency: (H, max_len) mean weight by recency, as the model generated it

    def forward(self, x: AttnInputs) -> tuple[Tensor, Tensor]:
        if self.mode == "softmax":
            z = x.s
        elif self.mode == "uniform":
            z = torch.zeros_like(x.s)
        elif self.mode == "recency":  # the same map for every user: position, no content
            z = torch.log(self.kernel[:, x.rel].clamp_min(1e-12)).to(x.s.dtype).expand_as(x.s)
        else:  # newest: the query's own position (rel == 0 on an allowed key is the diagonal)
            z = torch.where(x.rel == 0, 0.0, -1e4).expand_as(x.s)
        return masked_softmax(z, x.allowed), x.s.new_zeros(())


@contextlib.contextmanager
def last_block_weights(model, mode: str, kernel: Tensor | None = None):
    attn = model.blocks[-1].attn
    saved = attn.weights
    attn.weights = FixedWeights(mode, kernel)
    try:
        yield
    finally:
        attn.weights = saved


class AttentionStats:
    """What the last block's attention looks like at the scoring query (the newest position),
    averaged over users and heads: the weight at each of the RECENT newest positions (recency 0
    is the newest item itself), the largest single weight, and the entropy of the row relative
    to uniform over the history (1: uniform, 0: one item)."""

    RECENT = 5

    def __init__(self, max_len: int):
        self.rows, self.top, self.rel_entropy = 0, 0.0, 0.0
        self.by_recency: Tensor | None = None  # (H, max_len): summed weight by recency, per head
        self.max_len = max_len

    def __call__(self, module, inputs, output) -> None:
        x, a = inputs[0], output[0].detach()[:, :, -1, :].double()  # (B, H, L): the scoring query
        allowed = x.allowed[:, :, -1, :].expand_as(a)
        n = allowed.sum(-1).double()
        ent = -(a * torch.log(a.clamp_min(1e-30))).masked_fill(~allowed, 0.0).sum(-1)
        if self.by_recency is None:
            self.by_recency = torch.zeros(a.shape[1], self.max_len, dtype=torch.float64)
        self.by_recency.index_add_(1, x.rel[-1], a.sum(0))
        self.rows += a.shape[0] * a.shape[1]
        self.top += float(a.amax(-1).sum())
        self.rel_entropy += float(torch.where(n > 1, ent / torch.log(n.clamp_min(2.0)), 0.0).sum())

    def summary(self) -> dict:
        k = max(self.rows, 1)
        profile = self.kernel().mean(0)[: self.RECENT]
        return {"weight_by_recency": profile.tolist(), "largest_weight": self.top / k,
                "entropy_vs_uniform": self.rel_entropy / k}

    def kernel(self) -> Tensor:
        """(H, max_len): each head's mean weight by recency over the rows seen."""
        heads = self.by_recency.shape[0]
        return self.by_recency / max(self.rows // heads, 1)


@contextlib.contextmanager
def last_block_stats(model, max_len: int):
    stats = AttentionStats(max_len)
    handle = model.blocks[-1].attn.weights.register_forward_hook(stats)
    try:
        yield stats
    finally:
        handle.remove()


def run_variant(name: str, data: str, sets: dict, runs: Path, split_sets: dict, ds) -> dict:
    cfg_name, over = VARIANTS[name]
    overrides = merged(sets, over, {"data": {"source": data}})
    base = EARLIER_DEFAULTS / f"{cfg_name}.toml"
    run = load_run_config(base, overrides)
    out = train_or_resume(run, runs / name)
    return {"config": repo_path(base), "overrides": overrides,
            **diagnosed(load_checkpoint(out), split_sets, ds)}


def trained_run(name: str, run_dir: Path, data, split_sets: dict, ds) -> dict:
    """A run trained elsewhere (e.g. a seed of the accuracy benchmark, under its own budget):
    only the ablations are computed here; who trained it comes from its origin record."""
    ck = load_checkpoint(run_dir)
    if ck.run.data != data:
        raise SystemExit(f"--checkpoints {name}={run_dir}: trained on other data ({ck.run.data}) "
                         f"than the others or --data ({data})")
    tr = ck.run.train
    return {"config": repo_path(run_dir), "trained_by": origin(run_dir),
            "budget": f"patience {tr.patience}, cap {tr.epochs}, loss {tr.loss}",
            **diagnosed(ck, split_sets, ds)}


def diagnosed(ck, split_sets: dict, ds) -> dict:
    """How a checkpoint trained (best epoch, validation curve, test once) and what replacing its
    last block's attention does to validation."""
    m = ck.metrics
    kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres)
    sampling = default_sampling(ck.run.model)
    with last_block_stats(ck.model, ck.run.model.max_len) as stats:
        ablation = {"as_trained": evaluate(ck.model, split_sets["valid"], sampling=sampling, **kw)}
    kernel = stats.kernel().float()
    for mode in ABLATIONS:
        with last_block_weights(ck.model, mode, kernel):
            ablation[mode] = evaluate(ck.model, split_sets["valid"], sampling=None, **kw)
    hist = [h for h in m["history"] if "valid_ndcg@10" in h]
    return {"kind": ck.run.model.attention, "seed": ck.run.train.seed, "best_epoch": m["best_epoch"],
            "epochs_run": m.get("epochs_run", len(hist)),
            "stopped_by": m.get("stopped_by"), "train_seconds": m["train_seconds"],
            "valid_curve": {"epoch": [h["epoch"] for h in hist],
                            "ndcg@10": [h["valid_ndcg@10"] for h in hist],
                            "coverage@10": [h.get("valid_coverage@10") for h in hist]},
            "best_valid": m["valid"], "test_once": m["test"], "last_block_attention_valid": stats.summary(),
            "ablation_valid": {k: {"ndcg@10": v["ndcg@10"], "hr@10": v["hr@10"], "coverage@10": v["coverage@10"]}
                               for k, v in ablation.items()}}


def parse_checkpoints(spec: str) -> dict[str, Path]:
    """NAME=RUN_DIR,... -> {name: run folder}; every folder must hold a finished training."""
    out = {}
    for item in filter(None, spec.split(",")):
        name, sep, d = item.partition("=")
        if not sep or not name or not d:
            raise SystemExit(f"--checkpoints: {item!r} is not NAME=RUN_DIR")
        if not (Path(d) / "metrics.json").is_file():
            raise SystemExit(f"--checkpoints {name}: {d} holds no finished training (no metrics.json)")
        out[name] = Path(d)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=60, help="fixed epochs for every variant (no early stop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE")
    ap.add_argument("--checkpoints", default="", metavar="NAME=RUN_DIR,...",
                    help="ablate these trained runs instead of training --variants (e.g. the accuracy "
                         "benchmark's seeds, at their own budget)")
    ap.add_argument("--runs", default="runs/diagnose")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trained = parse_checkpoints(a.checkpoints)
    names = [] if trained else a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    sets = parse_sets(a.sets)
    # One budget for every variant: a fixed epoch count, patience that cannot bite, no clock.
    sets["train"].update(epochs=a.epochs, patience=a.epochs, max_minutes=0.0, seed=a.seed)
    out = a.out or results_stem("diagnose", a.data)
    runs = Path(a.runs) / a.data
    data_cfg = load_run_config(None, {"data": {**sets["data"], "source": a.data}}).data
    if trained:  # the data the runs were trained on (a synthetic one is defined by its sizes)
        data_cfg = read_config(next(iter(trained.values()))).data
        if data_cfg.source != a.data:
            raise SystemExit(f"--checkpoints: trained on {data_cfg.source!r}, not --data {a.data!r}")
    ds = load_source(data_cfg)
    split_sets = eval_sets(leave_one_out(ds))
    commit = git_commit()  # the code this process runs: taken at start, not when a result is written
    command = "python -m benchmarks.diagnose " + " ".join(argv if argv is not None else sys.argv[1:])
    todo = [(n, lambda n=n: run_variant(n, a.data, sets, runs, split_sets, ds)) for n in names]
    todo += [(n, lambda n=n, d=d: trained_run(n, d, data_cfg, split_sets, ds)) for n, d in trained.items()]
    doc = None
    for name, diagnose in todo:
        entry = diagnose()
        entry.update(command=command, machine=machine_info()["cpu"], commit=commit)
        doc = update_results(out + ".json", lambda d: (d.setdefault("data", a.data),
                                                       d.setdefault("variants", {}).__setitem__(name, entry)), render)
    return doc


def render(doc: dict) -> str:
    vs = doc["variants"]
    lines = [f"# Diagnostics on {doc['data']}: per-epoch validation, attention ablations", "",
             "Each variant trains for the same fixed epochs (patience = epochs, no wall-time cap), one seed; "
             "selection of the reported weights on validation NDCG@10; test read once. A run ablated after "
             "training elsewhere (its budget named below) kept the budget it was trained under.", "",
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
              "| variant | as trained | softmax(S) | uniform | newest only | its own mean map by recency |",
              "|---|---|---|---|---|---|"]
    for n, e in vs.items():
        ab = e["ablation_valid"]
        lines.append(f"| {n} | " + " | ".join(f"{ab[k]['ndcg@10']:.4f} / {ab[k]['coverage@10']:.3f}" if k in ab
                                             else "–" for k in ("as_trained", *ABLATIONS)) + " |")
    shown = [(n, e["last_block_attention_valid"]) for n, e in vs.items() if "last_block_attention_valid" in e]
    if shown:
        lines += ["", "## The last block's attention as trained, at the scoring query (validation, mean over "
                      "users and heads)", "",
                  "| variant | weight on the newest item, the one before, ... (recency 0–4) | largest weight | "
                  "entropy / log(history) |", "|---|---|---|---|"]
        lines += [f"| {n} | {' / '.join(f'{w:.3f}' for w in a['weight_by_recency'])} | {a['largest_weight']:.3f} | "
                  f"{a['entropy_vs_uniform']:.3f} |" for n, a in shown]
    lines += ["", "Commands, machines, commits:", ""]
    for n, e in vs.items():
        lines.append(f"- {n}: `{e['command']}` on {e['machine']}, seed {e['seed']}, commit {e['commit']}, "
                     f"{e['train_seconds']:.0f} s" if "budget" not in e else
                     f"- {n}: ablated by `{e['command']}` on {e['machine']}, commit {e['commit']}; the run "
                     f"`{e['config']}` ({e['budget']}, seed {e['seed']}, {e['train_seconds']:.0f} s) was trained by "
                     + (f"`{t['command']}` on {t['machine']}, commit {t['commit']}" if (t := e["trained_by"])
                        else "an unrecorded command"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
