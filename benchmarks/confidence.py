"""Per-user confidence: does the samples' agreement predict whether the top-10 holds the
next item, better than a softmax model's own signals?

    python -m benchmarks.confidence --softmax runs/s0,runs/s1 --vae runs/v0,runs/v1 \\
        --diffusion runs/d0,runs/d1 --out benchmarks/results/confidence_ml100k

Signals (higher = more confident), per user, on the mean scores with the history masked:
`max_prob` (the largest softmax probability) and `neg_entropy` (minus the entropy of
softmax(scores)) for every model; for the generative kinds with S sampled maps also
`agreement` (mean pairwise overlap of the samples' top-10 lists, the runtime's
`confidence`) and `neg_score_std` (minus the samples' score spread over the mean list).
For each checkpoint (a training seed) and signal: AUROC for "the top-10 contains the next
item", and the hit rate among the 20% most and 20% least confident users. The signal
reported for a generative family is chosen on validation (best mean AUROC), then read
once on test. Rows are means ± std over the checkpoints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from genattn.checkpoint import checkpoint_data, load_checkpoint
from genattn.data import leave_one_out
from genattn.evaluation import eval_sets, user_signals
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.models import default_sampling, stochastic_sampling

from .machine import git_commit, machine_info

SIGNALS = {"max_prob": 1.0, "neg_entropy": -1.0, "agreement": 1.0, "neg_score_std": -1.0}
SOURCE = {"max_prob": "max_prob", "neg_entropy": "entropy", "agreement": "confidence", "neg_score_std": "score_std"}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based first rank of each distinct value
    ranks = (first + (counts + 1) / 2.0)[inv]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tail_hits(score: np.ndarray, hit: np.ndarray, share: float = 0.2) -> tuple[float, float]:
    """Hit rate among the `share` most and least confident users (ties broken by user order)."""
    order = np.argsort(-score, kind="stable")
    n = max(1, int(round(share * len(score))))
    return float(hit[order[:n]].mean()), float(hit[order[-n:]].mean())


def measure(path: Path, samples: int, seed: int) -> dict[str, dict]:
    """{split: {signal: {auroc, top20, bottom20}}} for one checkpoint."""
    ck = load_checkpoint(path)
    ds = checkpoint_data(ck)
    sets = eval_sets(leave_one_out(ds))
    base = default_sampling(ck.run.model)
    samp = None if base is None else stochastic_sampling(ck.run.model.attention, base, n_samples=samples)
    out = {}
    for split in ("valid", "test"):
        sig = user_signals(ck.model, sets[split], sampling=samp, seed=seed, k=10)
        hit = sig["rank"] < 10
        out[split] = {}
        for name, sign in SIGNALS.items():
            if SOURCE[name] not in sig:
                continue
            s = sign * sig[SOURCE[name]]
            top, bottom = tail_hits(s, hit)
            out[split][name] = {"auroc": auroc(s, hit), "top20": top, "bottom20": bottom}
        out[split]["hit@10"] = float(hit.mean())
    return {"attention": ck.run.model.attention, **out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for fam in ("softmax", "vae", "diffusion"):
        ap.add_argument(f"--{fam}", default="", help="comma-separated checkpoints (one per training seed)")
    ap.add_argument("--samples", type=int, default=16, help="S sampled maps for the generative signals")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="results path without suffix")
    a = ap.parse_args(argv)
    per: dict[str, list[dict]] = {}
    for fam in ("softmax", "vae", "diffusion"):
        paths = [Path(p) for p in getattr(a, fam).split(",") if p]
        per[fam] = [measure(p, a.samples, a.sample_seed) for p in paths]
    rows, chosen = [], {}
    for fam, ms in per.items():
        if not ms:
            continue
        names = [n for n in SIGNALS if n in ms[0]["valid"]]
        valid = {n: float(np.mean([m["valid"][n]["auroc"] for m in ms])) for n in names}
        chosen[fam] = max(valid, key=valid.get)
        for n in names:
            t = [m["test"][n] for m in ms]
            au = [x["auroc"] for x in t]
            rows.append({"family": fam, "signal": n, "selected_on_valid": n == chosen[fam],
                         "valid_auroc": valid[n], "auroc": float(np.mean(au)),
                         "auroc_std": float(np.std(au, ddof=1)) if len(au) > 1 else 0.0,
                         "hit@10_top20": float(np.mean([x["top20"] for x in t])),
                         "hit@10_bottom20": float(np.mean([x["bottom20"] for x in t])),
                         "hit@10": float(np.mean([m["test"]["hit@10"] for m in ms])), "seeds": len(ms)})
    doc = {"command": "python -m benchmarks.confidence " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_info()["cpu"], "commit": git_commit(), "samples": a.samples,
           "sample_seed": a.sample_seed, "selection": "per family, the signal with the best mean validation AUROC",
           "chosen": chosen, "rows": rows, "verdict": verdict(rows)}
    write_json_atomic(a.out + ".json", doc)
    write_text_atomic(a.out + ".md", render(doc))
    return doc


SAMPLE_SIGNALS = ("agreement", "neg_score_std")  # what only S sampled maps can give


def verdict(rows: list[dict]) -> dict | None:
    """The issue's test: the best sample-based signal of a generative family (chosen on
    validation) against softmax's best signal (chosen on validation), on test AUROC, by more
    than twice the larger seed std. Undecided (beats None) with fewer than 2 seeds."""
    soft = [r for r in rows if r["family"] == "softmax"]
    gen = [r for r in rows if r["family"] != "softmax" and r["signal"] in SAMPLE_SIGNALS]
    if not soft or not gen:
        return None
    g = max(gen, key=lambda r: r["valid_auroc"])
    s = max(soft, key=lambda r: r["valid_auroc"])
    margin = 2 * max(g["auroc_std"], s["auroc_std"])
    decided = min(g["seeds"], s["seeds"]) >= 2
    return {"generative": f"{g['family']} {g['signal']}", "softmax": f"softmax {s['signal']}",
            "gain": g["auroc"] - s["auroc"], "margin": margin,
            "beats": (g["auroc"] - s["auroc"] > margin) if decided else None}


def render(doc: dict) -> str:
    lines = ["# Per-user confidence: AUROC for \"the top-10 holds the next item\" (test split)", "",
             f"Command: `{doc['command']}`", f"Machine: {doc['machine']}; commit {doc['commit']}; "
             f"S = {doc['samples']} sampled maps, sampling seed {doc['sample_seed']}.",
             f"Selection: {doc['selection']} (marked *).", "",
             "| family | signal | valid AUROC | test AUROC | hit@10, 20% most confident | hit@10, 20% least | "
             "hit@10, all | seeds |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        star = "*" if r["selected_on_valid"] else ""
        std = f" ± {r['auroc_std']:.4f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['family']} | {r['signal']}{star} | {r['valid_auroc']:.4f} | {r['auroc']:.4f}{std} | "
                     f"{r['hit@10_top20']:.3f} | {r['hit@10_bottom20']:.3f} | {r['hit@10']:.3f} | {r['seeds']} |")
    v = doc.get("verdict")
    if v:
        outcome = {True: "met", False: "missed", None: "undecided (one training seed: no std)"}[v["beats"]]
        lines += ["", f"Best sample-based generative signal ({v['generative']}, chosen on validation) against "
                      f"softmax's best ({v['softmax']}): {v['gain']:+.4f} test AUROC; the target needs more than "
                      f"{v['margin']:.4f}: **{outcome}**."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
