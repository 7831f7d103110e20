"""Training curves of several runs side by side, epoch by epoch: validation NDCG@10 and the
objective's terms (the served path's CE; for the generative kinds the posterior path's CE and
the bound). Paired seeds start from the same backbone, so two curves of one seed differ by the
attention and nothing else; where they part, and whether a lead holds, is read here.

    python -m benchmarks.curves --data ml-1m --seed 0 \\
        --curves softmax=softmax_anchor_l50_full,vae=vae_anchor_l50_full,vae_pgen=vae_anchor_pgen_l50_full

A source is a key of the accuracy results (`benchmarks/results/accuracy_<data>.json`, the
record of --seed), or a run folder (finished or still training: its checkpointed history). A
key the results do not record yet is looked up as a run folder under --runs, then in the
parked copies (`accuracy_<data>_inflight/`), so an unfinished run is drawn as far as it got.

Results: benchmarks/results/curves_<data>.{json,md,png} (or --out), each curve with the
command, commit and machine that trained it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from genattn.fileio import write_json_atomic, write_text_atomic

from .accuracy import origin
from .inflight import unfinished
from .machine import REPO, git_commit, machine_info, repo_path, results_stem

log = logging.getLogger("benchmarks.curves")

TERMS = ("ce", "ce_posterior", "bound")
SHOWN_EPOCHS = (1, 2, 4, 8, 12, 16, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200)


class CurveError(ValueError):
    """A source names no recorded seed and no run folder with a training history."""


def _from_record(rec: dict) -> dict:
    vc, tc = rec["valid_curve"], rec.get("train_curve", {})
    by_epoch = {e: {"valid_ndcg@10": n, "valid_coverage@10": c}
                for e, n, c in zip(vc["epoch"], vc["ndcg@10"], vc["coverage@10"])}
    for i, e in enumerate(tc.get("epoch", [])):
        by_epoch.setdefault(e, {}).update({t: tc[t][i] for t in TERMS if t in tc})
    return {"history": [{"epoch": e, **v} for e, v in sorted(by_epoch.items())], "finished": True,
            "best_epoch": rec["best_epoch"], "trained_by": {k: rec.get(k) for k in ("command", "commit", "machine")}}


def _from_run(run_dir: Path) -> dict:
    if unfinished(run_dir):  # its checkpointed state holds the history so far
        progress = json.loads((run_dir / "state.json").read_text())["progress"]
        hist, best, finished = progress["history"], progress.get("best_epoch"), False
    else:
        metrics = run_dir / "metrics.json"
        m = json.loads(metrics.read_text()) if metrics.is_file() else {}
        if not m.get("history"):
            raise CurveError(f"{run_dir}: no training history (neither state.json nor metrics.json holds one)")
        hist, best, finished = m["history"], m.get("best_epoch"), "test" in m
    by = origin(run_dir) or {}
    keep = ("epoch", "valid_ndcg@10", "valid_coverage@10", *TERMS)
    return {"history": [{k: h[k] for k in keep if k in h} for h in hist], "finished": finished,
            "best_epoch": best, "trained_by": {k: by.get(k) for k in ("command", "commit", "machine")}}


def load_curve(source: str, seed: int, results: dict, runs: Path, parked: Path) -> dict:
    """One curve from a results key (its seed's record) or a run folder; see the module docstring."""
    entry = results.get(source)
    rec = entry.get("per_seed", {}).get(str(seed)) if isinstance(entry, dict) else None
    if rec is not None and "valid_curve" in rec:
        return {"source": f"{source} (recorded)", "seed": seed, **_from_record(rec)}
    for d in (Path(source), runs / f"{source}_seed{seed}", parked / f"{source}_seed{seed}"):
        if d.is_dir() and ((d / "state.json").is_file() or (d / "metrics.json").is_file()):
            return {"source": repo_path(d), "seed": seed, **_from_run(d)}
    raise CurveError(f"{source!r}: no seed-{seed} record in the accuracy results, and no run folder "
                     f"{source}, {runs / f'{source}_seed{seed}'} or {parked / f'{source}_seed{seed}'}")


def parse_curves(text: str) -> list[tuple[str, str]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, source = part.partition("=")
        out.append((name, source or name))
    names = [n for n, _ in out]
    if not out or len(set(names)) != len(names):
        raise CurveError(f"--curves needs NAME=SOURCE pairs with distinct names, got {text!r}")
    return out


def _at(curve: dict, epoch: int) -> dict | None:
    return next((h for h in curve["history"] if h["epoch"] == epoch), None)


def paired_gap(a: dict, b: dict, last: int = 10) -> dict | None:
    """b's validation NDCG@10 minus a's over the epochs both evaluated: the mean over all of them,
    over the `last` latest, and how many of those b leads. A curve is noisy from epoch to epoch
    (about ±0.002 on ML-1M); its mean over many paired epochs is what a lead or lag is read from
    while the runs are unfinished."""
    va = {h["epoch"]: h["valid_ndcg@10"] for h in a["history"] if "valid_ndcg@10" in h}
    vb = {h["epoch"]: h["valid_ndcg@10"] for h in b["history"] if "valid_ndcg@10" in h}
    common = sorted(set(va) & set(vb))
    if not common:
        return None
    d = [vb[e] - va[e] for e in common]
    tail = d[-last:]
    return {"epochs": [common[0], common[-1]], "n": len(d), "mean": sum(d) / len(d),
            "last": {"epochs": [common[-len(tail)], common[-1]], "mean": sum(tail) / len(tail),
                     "ahead": sum(x > 0 for x in tail), "n": len(tail)}}


def render(doc: dict) -> str:
    curves = doc["curves"]
    names = list(curves)
    first = names[0]
    last = max(h["epoch"] for c in curves.values() for h in c["history"])
    shown = sorted({e for e in SHOWN_EPOCHS if e <= last} | {c["best_epoch"] for c in curves.values()
                                                             if c.get("best_epoch")} | {last})
    lines = [f"# Training curves, {doc['data']}, seed {doc['seed']}", "",
             f"`{doc['command']}`", "",
             f"Drawn at commit {doc['commit']} on {doc['machine']['cpu']}; each curve names what trained it.", "",
             "| curve | source | trained by | commit | machine | epochs | best epoch (valid NDCG@10) |",
             "|---|---|---|---|---|---|---|"]
    for n, c in curves.items():
        h = c["history"]
        best = _at(c, c["best_epoch"]) if c.get("best_epoch") else None
        best_txt = f"{c['best_epoch']} ({best['valid_ndcg@10']:.4f})" if best and "valid_ndcg@10" in best else "–"
        by = c["trained_by"]
        lines.append(f"| {n} | {c['source']} | `{by.get('command') or '–'}` | {by.get('commit') or '–'} | "
                     f"{by.get('machine') or '–'} | {h[-1]['epoch'] if h else 0}"
                     f"{'' if c['finished'] else ', unfinished'} | {best_txt} |")
    gaps = doc.get("paired_gaps", {})
    if any(gaps.values()):
        lines += ["", "Paired by epoch, each curve against every curve above it (validation NDCG@10, the epochs "
                  "both reached):", "",
                  "| pair | epochs | mean gap | last epochs | their mean gap | ahead in |", "|---|---|---|---|---|---|"]
        for pair, g in gaps.items():
            if g:
                t = g["last"]
                lines.append(f"| {pair} | {g['epochs'][0]}–{g['epochs'][1]} | {g['mean']:+.4f} | "
                             f"{t['epochs'][0]}–{t['epochs'][1]} | {t['mean']:+.4f} | {t['ahead']} of {t['n']} |")
    head = ["epoch"] + [f"{n}: valid NDCG@10 / served CE" for n in names] + [f"{n} − {first}, valid" for n in names[1:]]
    lines += ["", "Validation NDCG@10 and the served path's training CE (dropout on) per epoch; "
              "bold: each curve's best epoch.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in shown:
        row = [str(e)]
        for n in names:
            h = _at(curves[n], e)
            if h is None or "valid_ndcg@10" not in h:
                row.append("–")
                continue
            v = f"{h['valid_ndcg@10']:.4f}"
            v = f"**{v}**" if e == curves[n].get("best_epoch") else v
            row.append(v + (f" / {h['ce']:.3f}" if "ce" in h else ""))
        base = _at(curves[first], e)
        for n in names[1:]:
            h = _at(curves[n], e)
            ok = h and base and "valid_ndcg@10" in h and "valid_ndcg@10" in base
            row.append(f"{h['valid_ndcg@10'] - base['valid_ndcg@10']:+.4f}" if ok else "–")
        lines.append("| " + " | ".join(row) + " |")
    gen = [n for n in names if any("bound" in h for h in curves[n]["history"])]
    if gen:
        lines += ["", "The generative curves' other terms: posterior path's CE / bound.", "",
                  "| epoch | " + " | ".join(gen) + " |", "|" + "---|" * (len(gen) + 1)]
        for e in shown:
            hs = [_at(curves[n], e) for n in gen]
            if any(h and "bound" in h for h in hs):
                cells = [f"{h['ce_posterior']:.3f} / {h['bound']:.2f}" if h and "bound" in h else "–" for h in hs]
                lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    for n, c in doc["curves"].items():
        h = [x for x in c["history"] if "valid_ndcg@10" in x]
        line, = top.plot([x["epoch"] for x in h], [x["valid_ndcg@10"] for x in h], label=n)
        t = [x for x in c["history"] if "ce" in x]
        bottom.plot([x["epoch"] for x in t], [x["ce"] for x in t], color=line.get_color(), label=f"{n}, served")
        if any("ce_posterior" in x for x in t):
            bottom.plot([x["epoch"] for x in t], [x["ce_posterior"] for x in t], color=line.get_color(),
                        linestyle=":", label=f"{n}, posterior")
    top.set_ylabel("valid NDCG@10")
    bottom.set_ylabel("training CE (dropout on)")
    bottom.set_xlabel("epoch")
    top.set_title(f"{doc['data']}, seed {doc['seed']}")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curves", required=True, help="comma-separated NAME=SOURCE (a results key or a run folder)")
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--seed", type=int, default=0, help="the training seed whose record or run folder is drawn")
    ap.add_argument("--runs", default="runs/accuracy", help="where benchmarks.accuracy keeps its run folders")
    ap.add_argument("--results", help="the accuracy results without suffix (default benchmarks/results/accuracy_<data>); "
                                      "its parked runs are <results>_inflight/")
    ap.add_argument("--out", help="results path without suffix (default benchmarks/results/curves_<data>)")
    ap.add_argument("--no-plot", action="store_true", help="write the json and markdown only")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stem = Path(a.results) if a.results else REPO / results_stem("accuracy", a.data)
    res_path = stem.with_name(stem.name + ".json")
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    runs = Path(a.runs) / a.data
    curves = {name: load_curve(src, a.seed, results, runs, stem.with_name(stem.name + "_inflight"))
              for name, src in parse_curves(a.curves)}
    out = Path(a.out) if a.out else REPO / results_stem("curves", a.data)
    names = list(curves)
    doc = {"command": "python -m benchmarks.curves " + " ".join(sys.argv[1:] if argv is None else argv),
           "data": a.data, "seed": a.seed, "commit": git_commit(), "machine": machine_info(), "curves": curves,
           "paired_gaps": {f"{later} − {earlier}": paired_gap(curves[earlier], curves[later])
                           for j, later in enumerate(names) for earlier in names[:j]}}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), doc)  # one invocation's drawing, replaced whole
    write_text_atomic(out.with_suffix(".md"), render(doc))
    if not a.no_plot:
        plot(doc, out.with_suffix(".png"))
    log.info("wrote %s.{json,md%s}", repo_path(out), "" if a.no_plot else ",png")
    return doc


if __name__ == "__main__":
    try:
        main()
    except CurveError as e:
        sys.exit(f"error: {e}")
