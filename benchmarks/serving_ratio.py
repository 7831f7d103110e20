"""Serving cost of each kind's default configuration relative to softmax, measured in
one run with the kinds interleaved call by call (so load drift on a shared machine hits
every kind alike): ONNX Runtime CPU, batch 1, end to end through the runtime (raw ids in,
raw ids out) and the bare session.

    python -m benchmarks.serving_ratio --out benchmarks/results/cpu-2core-amd-epyc/serving_ratio

Defaults served: vae its prior mean, diffusion `--steps` DDIM steps from zeros (1, the
export default). Random-init models of each kind's default config (latency depends on
the shapes, not the weights), each at its own default max_len unless `--max-len` sets one
for all, exported through the latency suite's bundle cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from genattn.fileio import write_json_atomic, write_text_atomic
from genattn_runtime import Recommender

from .latency import ROOT, Bundles, model_key
from .machine import git_commit, machine_info


def kind_key(kind: str, steps: int, max_len: int):
    """The latency suite's key of the kind's default model, at `max_len` (0: the kind's own)."""
    from genattn.config import ModelConfig

    return model_key(kind, steps, max_len or ModelConfig(attention=kind).max_len, 1682)


def variant_config(kind: str, steps: int, max_len: int, **model):
    """The RunConfig of the kind's default model at `max_len`, with the `model` fields replaced."""
    import dataclasses

    from .latency import model_config

    run = model_config(kind_key(kind, steps, max_len))
    return dataclasses.replace(run, model=dataclasses.replace(run.model, **model))


def shape(m) -> dict:
    """What the results record of a served model (a ModelConfig)."""
    from .latency.bundles import model_shape

    return {"max_len": m.max_len, **model_shape(m), "recency_bias": m.recency_bias}


def variant_bundle(cache: Path, kind: str, steps: int, max_len: int, tag: str, opts, **model) -> Path:
    """A random-init model of the kind's default config, with the `model` fields replaced,
    exported with `opts` (ExportOptions) into its own cache folder."""
    import dataclasses

    import numpy as _np

    from genattn.checkpoint import save_checkpoint
    from genattn_export import export_bundle

    from .latency import make_model

    run = variant_config(kind, steps, max_len, **model)
    # The folder names the model's shape and a hash of its whole config: a change of the kind's
    # defaults never reuses an old bundle.
    ident = hashlib.sha1(json.dumps(dataclasses.asdict(run.model), sort_keys=True).encode()).hexdigest()[:10]
    folder = cache / (f"{kind}-s{steps}-{tag}-" + "L{max_len}-D{d_model}-B{n_blocks}".format(**shape(run.model))
                      + f"-{ident}")
    bundle = folder / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    net = make_model(kind_key(kind, steps, max_len), 0, run.model)
    save_checkpoint(folder / "checkpoint", net, run, item_ids=list(range(1, 1683)),
                    popularity=_np.zeros(1683, dtype=_np.int64), n_users=1)
    export_bundle(folder / "checkpoint", bundle, opts)
    return bundle


def stochastic_bundle(cache: Path, kind: str, steps: int, samples: int, sample_outputs: bool = True,
                      max_len: int = 0) -> Path:
    """The kind's default config exported with S sampled maps (and, with sample_outputs, the
    samples' own lists and agreement besides their mean)."""
    from genattn_export import ExportOptions

    opts = (ExportOptions(vae_mode="sample", samples=samples, verify_users=0, sample_outputs=sample_outputs)
            if kind == "vae" else ExportOptions(steps=steps, start="noise", eta=1.0, samples=samples, verify_users=0,
                                                sample_outputs=sample_outputs))
    return variant_bundle(cache, kind, steps, max_len, f"samples{samples}{'' if sample_outputs else '-mean-only'}",
                          opts)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", default="", help="comma-separated S: also time S-sample stochastic bundles")
    ap.add_argument("--aggregate", choices=["mean", "interleave", "vote"], default="mean",
                    help="how the S-sample bundles combine their samples (interleave / vote: the samples' own lists)")
    ap.add_argument("--mean-only-too", action="store_true",
                    help="also time the S-sample bundles exported without the sample outputs (--no-sample-outputs)")
    ap.add_argument("--max-len", type=int, default=0, help="one max_len for every kind (0: each kind's default)")
    ap.add_argument("--recency-bias-off-too", action="store_true",
                    help="also time each kind whose default has the recency bias without it (the bias's cost)")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "latency_cache"))
    ap.add_argument("--out", default="benchmarks/results/serving_ratio")
    a = ap.parse_args(argv)
    bundles = Bundles(Path(a.cache), seed=0, graph_k=100)
    recs = {}
    served = {}  # each entry's model (ModelConfig), as its results record it
    try:
        for kind in ("softmax", "vae", "diffusion"):
            recs[kind] = Recommender.load(bundles.get(kind_key(kind, a.steps, a.max_len)), backend="cpu",
                                          threads=a.threads)
            served[kind] = variant_config(kind, a.steps, a.max_len).model
    finally:
        bundles.close()
    sampled = set()
    for S in [int(x) for x in a.samples.split(",") if x]:
        for kind in ("vae", "diffusion"):
            sampled.add(f"{kind} S={S}")
            served[f"{kind} S={S}"] = served[f"{kind} S={S}, mean only"] = served[kind]
            recs[f"{kind} S={S}"] = Recommender.load(stochastic_bundle(Path(a.cache), kind, a.steps, S,
                                                                       max_len=a.max_len),
                                                     backend="cpu", threads=a.threads)
            if a.mean_only_too:
                recs[f"{kind} S={S}, mean only"] = Recommender.load(
                    stochastic_bundle(Path(a.cache), kind, a.steps, S, sample_outputs=False, max_len=a.max_len),
                    backend="cpu", threads=a.threads)
    if a.recency_bias_off_too:
        from genattn_export import ExportOptions

        for kind in [k for k in ("softmax", "vae", "diffusion") if served[k].recency_bias]:
            recs[f"{kind}, no recency bias"] = Recommender.load(
                variant_bundle(Path(a.cache), kind, a.steps, a.max_len, "plain",
                               ExportOptions(steps=a.steps, verify_users=0, k=100), recency_bias=False),
                backend="cpu", threads=a.threads)
            served[f"{kind}, no recency bias"] = variant_config(kind, a.steps, a.max_len, recency_bias=False).model
    rng = np.random.default_rng(0)
    histories = [list(rng.integers(1, 1683, size=int(rng.integers(5, 60)))) for _ in range(64)]
    e2e: dict[str, list[float]] = {k: [] for k in recs}
    for i in range(a.iters + 200):  # the first 200 rounds warm up
        h = histories[i % len(histories)]
        for kind, rec in recs.items():
            t0 = time.perf_counter()
            rec.recommend(h, k=10, seed=i, **({"aggregate": a.aggregate} if kind in sampled else {}))
            dt = time.perf_counter() - t0
            if i >= 200:
                e2e[kind].append(dt)
    res = {"command": "python -m benchmarks.serving_ratio " + " ".join(argv if argv is not None else sys.argv[1:]),
           "commit": git_commit(), "machine": machine_info(), "seeds": {"weights": 0, "histories": 0}, "batch": 1, "backend": "ONNX Runtime CPU (runtime end to end)",
           "threads": a.threads, "diffusion_steps": a.steps, "iters": a.iters, "aggregate": a.aggregate, "kinds": {}}
    base = float(np.median(e2e["softmax"]))
    for kind, ts in e2e.items():
        arr = np.asarray(ts) * 1e3
        res["kinds"][kind] = {"model": shape(served[kind]),
                              "p50_ms": float(np.median(arr)), "p90_ms": float(np.percentile(arr, 90)),
                              "p99_ms": float(np.percentile(arr, 99)),
                              "ratio_to_softmax_p50": float(np.median(arr)) / (base * 1e3)}
    res["target"] = {"ratio_limit": 1.3,
                     "met": {k: v["ratio_to_softmax_p50"] <= 1.3 for k, v in res["kinds"].items() if k in ("vae", "diffusion")}}
    lines = ["# Serving cost of the default configurations (interleaved, one run)", "",
             f"Reproduce: `{res['command']}` (commit {res['commit']}; random-init weights and histories, seed 0)",
             f"Machine: {res['machine']['cpu']} ({res['machine']['cores']} cores), "
             f"{a.threads} threads; batch 1, end to end through the runtime; diffusion {a.steps} DDIM steps"
             + (f"; S-sample bundles answer aggregate={a.aggregate!r}" if sampled else "") + ".", "",
             "| kind | max_len / d / blocks / recency bias | p50 ms | p90 ms | p99 ms | p50 / softmax p50 |",
             "|---|---|---|---|---|---|"]
    for kind, v in res["kinds"].items():
        dims = "{max_len} / {d_model} / {n_blocks} / {recency_bias}".format(**v["model"])
        lines.append(f"| {kind} | {dims} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | {v['p99_ms']:.3f} | "
                     f"{v['ratio_to_softmax_p50']:.2f}× |")
    lines += ["", f"Target: each default generative configuration within 1.3× softmax: {res['target']['met']}."]
    write_json_atomic(a.out + ".json", res)
    write_text_atomic(a.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    for rec in recs.values():
        rec.close()
    return res


if __name__ == "__main__":
    main()
