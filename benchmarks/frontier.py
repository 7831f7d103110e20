"""Accuracy–diversity frontier on the test split: NDCG@10 against coverage@10, ILD@10
and category coverage cc@10, traced by each generative kind's serving-time knobs and by
the usual ways to diversify a softmax model at serving time.

    python -m benchmarks.frontier --softmax runs/s0,runs/s1,runs/s2 --vae runs/v0,runs/v1,runs/v2 \\
        --diffusion runs/d0,runs/d1,runs/d2 --out benchmarks/results/frontier_ml100k

Each family takes one checkpoint per training seed; a point is the mean over them (its
`ndcg@10_std` the std over them), each checkpoint's value being the mean over
`--sample-seeds` draws. Methods (family softmax): plain; gumbel (temperature T: a
ranking sampled from softmax(scores / T)); mmr (lambda: relevance vs similarity to
what is already picked, over item embeddings); mc_dropout (dropout rate kept on,
scores averaged over MC_PASSES passes, masks from the sampling seed). Generative
families: plain (the deterministic mode); temperature (the prior's noise scale tau,
what the runtime's `diversity` sets); samples (S sampled maps, scores averaged);
interleave and vote (S samples' own top lists merged round-robin, or ranked by how
many samples list an item: genattn/models/aggregate.py); diffusion also eta.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from genattn import diversify
from genattn.checkpoint import checkpoint_data, load_checkpoint
from genattn.data import leave_one_out
from genattn.evaluation import eval_sets, evaluate
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.models import default_sampling

from .accuracy import stochastic
from .machine import git_commit, machine_info

SHOWN = ("ndcg@10", "coverage@10", "ild@10", "cc@10")
MC_PASSES = 8
GUMBEL_T = (0.1, 0.25, 0.5, 1.0)
MMR_LAMBDA = (0.9, 0.8, 0.7, 0.5)
MC_DROPOUT = (0.05, 0.1, 0.2, 0.3)
TEMPERATURES = (0.1, 0.25, 0.5, 1.0, 2.0)
SAMPLES = (1, 4, 16)
AGG_SAMPLES = (4, 16)
ETAS = (0.0, 0.5, 1.0)


def point(family: str, method: str, knob: str | None, value, per_ck: list[list[dict]]) -> dict:
    """per_ck: for each checkpoint (training seed), its runs over sampling seeds."""
    p = {"method": method, "family": family, "knob": knob, "value": value, "seeds": len(per_ck)}
    means = [{m: float(np.mean([r[m] for r in runs])) for m in SHOWN if m in runs[0]} for runs in per_ck]
    for m in means[0]:
        v = [x[m] for x in means]
        p[m] = float(np.mean(v))
        p[f"{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    p["ndcg@10_std_over_draws"] = float(np.mean([np.std([r["ndcg@10"] for r in runs]) for runs in per_ck]))
    return p


def frontier(checkpoints: dict[str, list[Path]], sample_seeds: list[int], log=print) -> tuple[list[dict], str]:
    """The points, and the dataset the checkpoints were trained on."""
    points, data = [], "?"
    for family, paths in checkpoints.items():
        cks = [load_checkpoint(p) for p in paths]
        data = cks[0].metrics.get("data", data)
        ds = checkpoint_data(cks[0])
        test = eval_sets(leave_one_out(ds))["test"]
        cfg = cks[0].run.model

        def run(seeds=(0,), make=None, **extra) -> list[list[dict]]:
            out = []
            for ck in cks:
                model = ck.model.eval()
                kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres,
                          sampling=default_sampling(ck.run.model))
                out.append([evaluate(model, test, seed=s, **{**kw, **extra, **(make(model, s) if make else {})})
                            for s in seeds])
            return out

        base = default_sampling(cfg)
        points.append(point(family, "plain", None, None, run()))
        if family == "softmax":
            for t in GUMBEL_T:
                points.append(point(family, "gumbel", "temperature", t,
                                    run(sample_seeds, make=lambda m, s, t=t: {"rerank": diversify.gumbel_topk(t, seed=s)})))
            for lam in MMR_LAMBDA:
                points.append(point(family, "mmr", "lambda", lam,
                                    run(make=lambda m, s, lam=lam: {"rerank": diversify.mmr(m.item_emb.weight, lam)})))
            for p in MC_DROPOUT:
                points.append(point(family, "mc_dropout", "dropout", p,
                                    run(sample_seeds, mc_dropout=p, mc_passes=MC_PASSES)))
        else:
            kind = cfg.attention
            st = stochastic(kind, base)
            for tau in TEMPERATURES:
                points.append(point(family, "temperature", "tau", tau, run(sample_seeds, sampling=st, noise_scale=tau)))
            for n in SAMPLES:
                points.append(point(family, "samples", "S", n, run(sample_seeds, sampling=replace(st, n_samples=n))))
            for how in ("interleave", "vote"):
                for n in AGG_SAMPLES:
                    points.append(point(family, how, "S", n,
                                        run(sample_seeds, sampling=replace(st, n_samples=n), aggregate=how)))
            if kind == "diffusion":
                for eta in ETAS:
                    points.append(point(family, "eta", "eta", eta, run(sample_seeds, sampling=replace(st, eta=eta))))
        log(f"{family}: {len([p for p in points if p['family'] == family])} points")
    return points, data


def summary(points: list[dict]) -> dict:
    """The issue's test: among points within 1% of the best softmax NDCG@10, does a
    generative knob reach a higher coverage@10 than every softmax method?"""
    soft = [p for p in points if p["family"] == "softmax"]
    best = max(p["ndcg@10"] for p in soft)
    floor = 0.99 * best
    ok = [p for p in points if p["ndcg@10"] >= floor]
    best_soft = max((p for p in ok if p["family"] == "softmax"), key=lambda p: p["coverage@10"])
    gen = [p for p in ok if p["family"] != "softmax"]
    best_gen = max(gen, key=lambda p: p["coverage@10"]) if gen else None
    out = {"best_softmax_ndcg@10": best, "ndcg_floor": floor,
           "best_softmax_coverage_within_floor": best_soft,
           "best_generative_coverage_within_floor": best_gen,
           "generative_wins": bool(best_gen and best_gen["coverage@10"] > best_soft["coverage@10"])}
    if "cc@10" in soft[0]:  # category coverage, where the data has categories
        soft_cc = max(p["cc@10"] for p in ok if p["family"] == "softmax")
        gen_cc = max((p["cc@10"] for p in gen), default=None)
        out.update(best_softmax_cc_within_floor=soft_cc, best_generative_cc_within_floor=gen_cc,
                   generative_wins_cc=bool(gen_cc is not None and gen_cc > soft_cc))
    return out


def plot(points: list[dict], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("coverage@10", "ild@10", "cc@10") if m in points[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5))
    for ax, metric in zip(axes, metrics):
        for (fam, meth) in sorted({(p["family"], p["method"]) for p in points}):
            ps = sorted((p for p in points if p["family"] == fam and p["method"] == meth), key=lambda p: p[metric])
            marker = {"softmax": "o", "vae": "s", "diffusion": "^"}[fam]
            ax.plot([p[metric] for p in ps], [p["ndcg@10"] for p in ps], marker=marker, label=f"{fam} {meth}")
        ax.set_xlabel(metric)
        ax.set_ylabel("NDCG@10 (test)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = out + ".png.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    Path(tmp).replace(out + ".png")
    plt.close(fig)


def render(r: dict) -> str:
    s = r["summary"]
    lines = [f"# Accuracy–diversity frontier ({r['data']}, test split)", "",
             f"Reproduce: `{r['command']}`", f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores).",
             f"Checkpoints: {', '.join(f'{k}: {v}' for k, v in r['checkpoints'].items())}.", "",
             "Points: mean over the training seeds (± std over them for NDCG@10).", "",
             "| family | method | knob | value | NDCG@10 | coverage@10 | ILD@10 | cc@10 | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in r["points"]:
        std = f" ± {p['ndcg@10_std']:.4f}" if p.get("seeds", 1) > 1 else ""
        cc = f"{p['cc@10']:.4f}" if "cc@10" in p else "–"
        lines.append(f"| {p['family']} | {p['method']} | {p['knob'] or '–'} | {p['value'] if p['value'] is not None else '–'} | "
                     f"{p['ndcg@10']:.4f}{std} | {p['coverage@10']:.4f} | {p['ild@10']:.4f} | {cc} | {p.get('seeds', 1)} |")
    bs, bg = s["best_softmax_coverage_within_floor"], s["best_generative_coverage_within_floor"]
    lines += ["", f"Within 1% of the best softmax NDCG@10 ({s['best_softmax_ndcg@10']:.4f}, floor {s['ndcg_floor']:.4f}): "
              f"best softmax coverage@10 {bs['coverage@10']:.4f} ({bs['method']} {bs['value']}); best generative "
              + (f"{bg['coverage@10']:.4f} ({bg['family']} {bg['method']} {bg['value']})" if bg else "none")
              + f". Generative wins: **{s['generative_wins']}**."]
    if "generative_wins_cc" in s:
        gcc = s["best_generative_cc_within_floor"]
        lines += ["", f"cc@10 within the same floor: best softmax {s['best_softmax_cc_within_floor']:.4f}, best generative "
                      + (f"{gcc:.4f}" if gcc is not None else "none") + f". Generative wins: **{s['generative_wins_cc']}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for fam in ("softmax", "vae", "diffusion"):
        ap.add_argument(f"--{fam}", help=f"{fam} checkpoint folders, comma-separated (one per training seed)")
    ap.add_argument("--sample-seeds", default="0,1,2")
    ap.add_argument("--out", default="benchmarks/results/frontier_ml100k")
    a = ap.parse_args(argv)
    cks = {f: [Path(p) for p in getattr(a, f).split(",") if p] for f in ("softmax", "vae", "diffusion")
           if getattr(a, f)}
    if "softmax" not in cks:
        ap.error("--softmax is required (the frontier is measured against it)")
    pts, data = frontier(cks, [int(s) for s in a.sample_seeds.split(",")])
    r = {"command": "python -m benchmarks.frontier " + " ".join(argv if argv is not None else sys.argv[1:]),
         "machine": machine_info(), "data": data, "checkpoints": {k: [p.name for p in v] for k, v in cks.items()},
         "commit": git_commit(),
         "points": pts}
    r["summary"] = summary(pts)
    write_json_atomic(a.out + ".json", r)
    write_text_atomic(a.out + ".md", render(r))
    plot(pts, a.out)
    return r


if __name__ == "__main__":
    main()
