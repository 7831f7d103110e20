"""The main job on the embedded default data (ML-100K when installed, else synthetic):
train -> evaluate -> export -> recommend through the torch-free runtime -> latency summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np


def run_demo(out: Path, attention: str = "diffusion", epochs: int | None = None) -> dict:
    from genattn_export import ExportOptions, export_bundle
    from genattn_runtime import Recommender

    from .config import load_run_config
    from .training import train

    cfg_file = Path(__file__).parent / "configs" / f"{attention}.toml"
    run = load_run_config(cfg_file)
    # The demo keeps to a few minutes on 2 CPU cores; benchmarks/ trains to convergence.
    run.train.epochs = epochs or 12
    run.train.max_minutes = 4.0
    from .data import load_source

    ds = load_source(run.data)
    click.echo(f"[1/4] training {attention} attention on {ds.source} ({ds.n_users} users, {ds.n_items} items; "
               f"{run.train.epochs} epochs or {run.train.max_minutes:.0f} min at most)")
    res = train(run, out / "checkpoint", dataset=ds)
    t = res.metrics["test"]
    click.echo(f"      test NDCG@10 {t['ndcg@10']:.4f}  HR@10 {t['hr@10']:.4f}  coverage@10 {t['coverage@10']:.3f}")

    click.echo("[2/4] exporting to ONNX with self-verification")
    m = export_bundle(out / "checkpoint", out / "bundle", ExportOptions(verify_users=128))
    p = m["parity"]["fp32"]
    click.echo(f"      {m['graph']['nodes']} nodes, parity max|diff| {p['max_abs_diff']:.1e}, "
               f"top-K overlap {p['min_topk_overlap']:.3f}")

    click.echo("[3/4] recommending through the runtime (no torch)")
    rec = Recommender.load(out / "bundle")
    items = json.loads((out / "bundle" / "items.json").read_text())["item_ids"]
    history = items[:5]
    r = rec.recommend(history, k=5)
    click.echo(f"      backend {rec.backend}; history {history} -> {r.items}")

    click.echo("[4/4] latency, batch 1, 200 calls after warm-up")
    for _ in range(20):
        rec.recommend(history, k=10)
    lat = []
    for _ in range(200):
        t0 = time.perf_counter()
        rec.recommend(history, k=10)
        lat.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = np.percentile(lat, [50, 99])
    click.echo(f"      p50 {p50:.3f} ms  p99 {p99:.3f} ms  ({1e3 / np.mean(lat):.0f} users/s)")
    summary = {"test": t, "parity": p, "latency_ms": {"p50": float(p50), "p99": float(p99)}, "backend": rec.backend}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"done: {out}/checkpoint, {out}/bundle, {out}/demo_summary.json")
    return summary
